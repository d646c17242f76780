"""Stage 1 searches one query over a small index on one OpenMP thread (``stage1.one_thread_for``): the same results
as with FAISS's threads, and the thread count of the calling thread is restored afterwards."""

from __future__ import annotations

import numpy as np
import pytest

from rap_deploy.library import stage1

faiss = pytest.importorskip("faiss")


@pytest.fixture(autouse=True)
def _keep_threads():
    """Restore this thread's FAISS thread count for the tests that follow."""
    before = faiss.omp_get_max_threads()
    yield
    faiss.omp_set_num_threads(before)


def _index(kind: str, n: int, dim: int = 8, seed: int = 0) -> tuple[object, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[n // 2:n // 2 + 20] = vectors[0]  # ties straddling k
    index = stage1.new_index(kind, dim, vectors if kind == "ivf" else None)
    stage1.add(index, vectors, np.arange(n, dtype=np.int64) * 2)  # ids that are not positions (IndexIDMap maps them)
    return index, rng.standard_normal((1, dim)).astype(np.float32)


@pytest.mark.parametrize("kind", stage1.ANN_TYPES)
def test_one_query_on_one_thread_finds_what_faiss_threads_find(kind, monkeypatch):
    """The single-thread search of one query equals, bit for bit, the search on four threads (every ANN type, with
    removed rows, ties at k and an index just under the bound where FAISS would split one query over threads)."""
    n = stage1.ONE_THREAD_BELOW - 1 if kind == "exact" else 3000
    index, query = _index(kind, n)
    exclude = np.arange(10, 400, 7, dtype=np.int64) * 2
    faiss.omp_set_num_threads(4)
    for k in (1, 25, 101):
        limited = stage1.search(index, kind, query, k, 16, exclude)
        with monkeypatch.context() as m:
            m.setattr(stage1, "ONE_THREAD_BELOW", 0)  # FAISS's four threads
            threaded = stage1.search(index, kind, query, k, 16, exclude)
        assert limited[0].tobytes() == threaded[0].tobytes() and np.array_equal(limited[1], threaded[1]), (kind, k)


class _Recording:
    """A stand-in index that records the OpenMP thread count its search runs with."""

    def __init__(self, ntotal: int) -> None:
        self.ntotal, self.seen = ntotal, []

    def search(self, q: np.ndarray, k: int, params: object = None) -> tuple[np.ndarray, np.ndarray]:
        self.seen.append(faiss.omp_get_max_threads())
        return (np.zeros((len(q), k), np.float32) - np.arange(k, dtype=np.float32),
                np.tile(np.arange(k, dtype=np.int64), (len(q), 1)))


@pytest.mark.parametrize(("queries", "ntotal", "one"), [(1, 200, True), (1, stage1.ONE_THREAD_BELOW, False),
                                                        (3, 200, False)])
def test_only_one_query_over_a_small_index_runs_on_one_thread(queries, ntotal, one):
    faiss.omp_set_num_threads(3)
    index = _Recording(ntotal)
    stage1.search(index, "exact", np.zeros((queries, 4), np.float32), 5)
    assert index.seen == ([1] if one else [3])
    assert faiss.omp_get_max_threads() == 3  # restored for what this thread runs next
