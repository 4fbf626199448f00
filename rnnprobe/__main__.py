from rnnprobe.cli.app import main

main()
