from iddm_cli.cli.app import main

main()
