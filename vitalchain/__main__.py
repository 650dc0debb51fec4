from vitalchain.app.cli import main

main()
