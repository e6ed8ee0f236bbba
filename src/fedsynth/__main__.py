from .cli import main

if __name__ == "__main__":  # not in the spawned worker processes of fed.parallel-clients
    main()
