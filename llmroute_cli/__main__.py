from llmroute_cli.commands import main

main()
