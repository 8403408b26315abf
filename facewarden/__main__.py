from facewarden.cli import main

main()
