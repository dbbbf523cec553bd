from rtkrun.cli import main

main()
