from charnn.data.corpus import BUILTIN_CAP, builtin_corpus, stdlib_files


def test_builtin_corpus_is_python_source_in_stable_order_without_tests():
    files = stdlib_files()
    assert files and all(f.suffix == ".py" for f in files)
    assert not any(part in ("test", "tests", "idle_test") for f in files for part in f.parts[-3:-1])
    assert files == stdlib_files()  # stable order
    a = builtin_corpus(cap=200_000)
    assert len(a.text) == 200_000 and a.name == "stdlib"
    assert a.text.startswith("# file: ") and "def " in a.text
    assert builtin_corpus(cap=200_000).text == a.text


def test_builtin_cap_is_documented_size():
    assert BUILTIN_CAP == 5_000_000
    assert len(builtin_corpus().text) == BUILTIN_CAP
