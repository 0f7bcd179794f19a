from featviz.cli import main

main()
