from ledger_svc.server import main

main()
