import sys

from flockd.testnet.main import main

sys.exit(main(sys.argv[1:]))
