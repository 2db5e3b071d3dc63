import sys

from flockd.testnet.deps import missing_modules

missing = missing_modules()
if missing:
    print(
        f"scripts/testnet: missing Python package(s) {', '.join(missing)}: "
        "run scripts/testnet itself (it sets up .venv) or `pip install -e '.[test]'`",
        file=sys.stderr,
    )
    sys.exit(3)

from flockd.testnet.main import main  # noqa: E402  (after the check: it imports them)

sys.exit(main(sys.argv[1:]))
