from fsg.cli import main

main()
