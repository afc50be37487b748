from services.encoder.server import main

main()
