from classifier_svc.server import main

main()
