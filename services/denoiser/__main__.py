from services.denoiser.server import main

main()
