import sys

import eth  # noqa: F401  (raises the recursion limit, as in the daemon)
import pytest

from flockd import safejson


def test_py_evm_raises_the_recursion_limit_so_the_bound_matters():
    assert sys.getrecursionlimit() > 10_000


@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_deep_nesting_is_refused_before_parsing(opener):
    closer = b"]" if opener == b"[" else b"}"
    with pytest.raises(safejson.TooDeep):
        safejson.loads(opener * 200_000 + closer * 200_000)


def test_brackets_inside_strings_do_not_count():
    text = '{"s": "' + "[{" * 5000 + '\\"]", "n": [[[1]]]}'
    assert safejson.loads(text)["n"] == [[[1]]]


def test_limit_is_exact():
    assert safejson.loads(b"[" * 64 + b"]" * 64, max_depth=64)
    with pytest.raises(safejson.TooDeep):
        safejson.loads(b"[" * 65 + b"]" * 65, max_depth=64)


def test_wide_documents_pass():
    batch = b"[" + b",".join(b'{"jsonrpc":"2.0","id":%d,"method":"m","params":[[1],[2]]}' % i for i in range(100)) + b"]"
    assert len(safejson.loads(batch)) == 100


@pytest.mark.parametrize("bad", [b"", b"{", b"\xff", b"[1,]"])
def test_malformed_is_a_value_error(bad):
    with pytest.raises(ValueError):
        safejson.loads(bad)
