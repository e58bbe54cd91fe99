from api_server.main import main

main()
