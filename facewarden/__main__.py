from facewarden.cli import main

if __name__ == "__main__":  # not in spawned worker processes, which import this as __mp_main__
    main()
