from featviz.launch import main

main()
