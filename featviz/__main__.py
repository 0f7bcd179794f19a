from featviz.cli.launch import main

main()
