from labctl.cli.main import main

main()
