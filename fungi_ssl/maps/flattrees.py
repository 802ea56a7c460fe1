"""A fast, exact walker of tree ensembles for map prediction.

:class:`FlatTrees` turns a fitted LightGBM regressor or scikit-learn random
forest into flat arrays that a small numba kernel walks eight rows at a time
without branches; it gives the same numbers as the libraries' own prediction
(the thresholds are compared exactly as they compare them) about two to three
times faster. :class:`fungi_ssl.maps.mapmodel.MapModel` uses it for the trees
it can read and falls back to the library's predict for the others.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["FlatTrees"]


# --------------------------------------------------------------------------
# A fast, exact walker of tree ensembles
# --------------------------------------------------------------------------
_ROWS_AT_ONCE = 8


def _walk_trees(X, feature, threshold, child, value, roots, depths, out):  # pragma: no cover - jitted
    """Add each tree's leaf value to ``out`` (numba kernel; see :class:`FlatTrees`)."""
    n = X.shape[0]
    b = 8  # _ROWS_AT_ONCE (a literal, so numba unrolls)
    nodes = np.empty(b, np.int64)
    for t in range(roots.shape[0]):
        root = roots[t]
        depth = depths[t]
        for i0 in range(0, n - b + 1, b):
            for k in range(b):
                nodes[k] = root
            for _ in range(depth):
                for k in range(b):
                    nd = nodes[k]
                    nodes[k] = child[2 * nd + (X[i0 + k, feature[nd]] > threshold[nd])]
            for k in range(b):
                out[i0 + k] += value[nodes[k]]
        for i in range(n - n % b, n):
            nd = root
            for _ in range(depth):
                nd = child[2 * nd + (X[i, feature[nd]] > threshold[nd])]
            out[i] += value[nd]
    return out


_KERNEL: Any = None


def _kernel() -> Any:
    global _KERNEL
    if _KERNEL is None:
        import numba

        _KERNEL = numba.njit(nogil=True, cache=True)(_walk_trees)
    return _KERNEL


class FlatTrees:
    """A tree ensemble as flat arrays, walked by a numba kernel.

    Every tree becomes nodes with a feature, a threshold and two children;
    leaves point to themselves, so each row takes exactly ``depth`` steps
    through its tree and the step ``node = child[2·node + (x > threshold)]``
    needs no branch. Eight rows go through a tree together.

    Exactness: LightGBM sends a row left when ``double(x) <= threshold``
    (a double). For float32 rows the kernel compares with the largest
    float32 not above the threshold, which gives the same decision for
    every float32 ``x``; float64 rows use the double thresholds.
    scikit-learn's trees first cast every row to float32 and then compare
    with their double threshold, so a forest (``float32_input=True``) casts
    float64 rows to float32 as well: a float64 value one ULP above a
    threshold that rounds down to it goes left there, as in scikit-learn.
    Rows must be finite (the map code never passes NaN).

    Build with :meth:`from_model`, which returns None for what it cannot
    read: categorical or linear trees, zero-as-missing splits, multi-output
    forests.

    Examples
    --------
    >>> import lightgbm
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(500, 4)); y = X[:, 0] + np.sin(X[:, 1])
    >>> m = lightgbm.LGBMRegressor(n_estimators=30, verbose=-1).fit(X, y)
    >>> flat = FlatTrees.from_model(m)
    >>> Z = rng.normal(size=(100, 4)).astype(np.float32)
    >>> bool(np.array_equal(flat.predict(Z), m.booster_.predict(Z)))
    True
    """

    def __init__(self, feature, threshold, child, value, roots, depths, *, mean: bool,
                 base: float = 0.0, float32_input: bool = False) -> None:
        self.feature = np.ascontiguousarray(feature, np.int64)
        self.threshold64 = np.ascontiguousarray(threshold, np.float64)
        t32 = self.threshold64.astype(np.float32)
        over = t32.astype(np.float64) > self.threshold64
        t32[over] = np.nextafter(t32[over], np.float32(-np.inf))
        self.threshold32 = t32
        self.child = np.ascontiguousarray(child, np.int64)
        self.value = np.ascontiguousarray(value, np.float64)
        self.roots = np.ascontiguousarray(roots, np.int64)
        self.depths = np.ascontiguousarray(depths, np.int64)
        self.mean = bool(mean)
        self.base = float(base)
        self.float32_input = bool(float32_input)

    @property
    def n_trees(self) -> int:
        return int(self.roots.shape[0])

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predictions for finite rows ``X`` (float32 or float64; float32 for a forest)."""
        X = np.asarray(X)
        if self.float32_input:  # scikit-learn's trees see float32 rows
            X = X.astype(np.float32, copy=False)
        elif X.dtype != np.float32:
            X = X.astype(np.float64, copy=False)
        X = np.ascontiguousarray(X)
        thr = self.threshold32 if X.dtype == np.float32 else self.threshold64
        out = np.zeros(X.shape[0], np.float64)
        _kernel()(X, self.feature, thr, self.child, self.value, self.roots, self.depths, out)
        if self.mean and self.n_trees:
            out /= self.n_trees
        return out + self.base if self.base else out

    @classmethod
    def from_model(cls, model: Any) -> FlatTrees | None:
        """Flatten a fitted ``LGBMRegressor`` or ``RandomForestRegressor`` (else None)."""
        try:
            import lightgbm

            if isinstance(model, lightgbm.LGBMRegressor):
                return cls._from_lightgbm(model.booster_)
        except ImportError:  # pragma: no cover
            pass
        from sklearn.ensemble import RandomForestRegressor

        if isinstance(model, RandomForestRegressor):
            return cls._from_forest(model)
        return None

    @classmethod
    def _from_lightgbm(cls, booster: Any) -> FlatTrees | None:
        dump = booster.dump_model()
        if dump.get("num_class", 1) != 1:
            return None
        feat: list[int] = []
        thr: list[float] = []
        kids: list[int] = []
        val: list[float] = []
        roots: list[int] = []
        depths: list[int] = []
        for tree in dump["tree_info"]:
            if tree.get("is_linear"):
                return None
            root = len(feat)
            stack = [(tree["tree_structure"], len(feat), 0)]
            feat.append(0), thr.append(0.0), kids.extend((0, 0)), val.append(0.0)
            depth = 0
            while stack:
                node, idx, d = stack.pop()
                if "leaf_value" in node:
                    thr[idx] = math.inf
                    kids[2 * idx] = kids[2 * idx + 1] = idx
                    val[idx] = float(node["leaf_value"])
                    depth = max(depth, d)
                    continue
                if node.get("decision_type") != "<=" or node.get("missing_type") == "Zero":
                    return None
                feat[idx] = int(node["split_feature"])
                thr[idx] = float(node["threshold"])
                for side, key in ((0, "left_child"), (1, "right_child")):
                    j = len(feat)
                    feat.append(0), thr.append(0.0), kids.extend((0, 0)), val.append(0.0)
                    kids[2 * idx + side] = j
                    stack.append((node[key], j, d + 1))
            roots.append(root)
            depths.append(depth)
        return cls(feat, thr, kids, val, roots, depths, mean=bool(dump.get("average_output")))

    @classmethod
    def _from_forest(cls, forest: Any) -> FlatTrees | None:
        if getattr(forest, "n_outputs_", 1) != 1:
            return None
        feat, thr, kids, val, roots, depths = [], [], [], [], [], []
        offset = 0
        for est in forest.estimators_:
            t = est.tree_
            n = t.node_count
            left, right = t.children_left.astype(np.int64), t.children_right.astype(np.int64)
            leaf = left < 0
            idx = np.arange(n, dtype=np.int64)
            f = np.where(leaf, 0, t.feature).astype(np.int64)
            th = np.where(leaf, np.inf, t.threshold)
            lc = np.where(leaf, idx, left) + offset
            rc = np.where(leaf, idx, right) + offset
            feat.append(f), thr.append(th), val.append(t.value[:, 0, 0].astype(np.float64))
            kids.append(np.stack([lc, rc], axis=1).reshape(-1))
            roots.append(offset)
            depths.append(int(t.max_depth))
            offset += n
        if not feat:
            return None
        return cls(np.concatenate(feat), np.concatenate(thr), np.concatenate(kids),
                   np.concatenate(val), roots, depths, mean=True, float32_input=True)
