from vitalchain.cli import main

main()
