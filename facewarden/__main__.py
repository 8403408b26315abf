from facewarden.daemon.cli import main

main()
