from expiry_worker.main import main

main()
