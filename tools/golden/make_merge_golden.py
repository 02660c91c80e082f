#!/usr/bin/env python3
"""Golden merge results from mergekit's own code.

    python3 tools/golden/make_merge_golden.py MERGEKIT_SRC OUT_DIR

MERGEKIT_SRC is a checkout of arcee-ai/mergekit (its `mergekit/` folder is
read, never modified). The merge methods' task code and sparsify.py run as
they are; only mergekit's framework plumbing (pydantic models, the task
graph, the registry) is replaced by the small stubs below, so this runs with
torch alone. For each case it writes OUT_DIR/<case>.safetensors holding the
inputs ("input.<i>") and mergekit's output ("output"), with the method, its
parameters, the base index and the embedding flag in the metadata.
tests/merge_golden_test.cpp feeds the same inputs to Mango's plugins.

Random methods (DARE, DELLA) draw from torch's global generator, which no
other implementation can replay: they are checked by their properties in
tests/merge_test.cpp instead.
"""
import json
import os
import shutil
import sys
import tempfile
import types

import torch
from safetensors.torch import save_file

STUBS = {
    "pydantic.py": '''
class BaseModel:
    def __init_subclass__(cls, **kw): pass
    def __init__(self, **kw):
        for k, v in kw.items(): setattr(self, k, v)
def Field(default=None, **kw): return default
''',
    "mergekit/__init__.py": "",
    "mergekit/architecture.py": '''
class WeightInfo:
    def __init__(self, name="w", is_embed=False, optional=False):
        self.name, self.is_embed, self.optional = name, is_embed, optional
''',
    "mergekit/common.py": '''
class ModelReference(str): pass
class ImmutableMap(dict):
    @property
    def data(self): return self
''',
    "mergekit/graph.py": '''
from typing import Generic, TypeVar
T = TypeVar("T")
class Task(Generic[T]):
    def __init_subclass__(cls, **kw): pass
''',
    "mergekit/merge_methods/__init__.py": "",
    "mergekit/merge_methods/base.py": '''
class ConfigParameterDef:
    def __init__(self, **kw): self.__dict__.update(kw)
class MergeMethod: pass
MergeTensorInput = object
''',
    "mergekit/merge_methods/registry.py": "REGISTERED_MERGE_METHODS = {}\n",
    "mergekit/merge_methods/easy_define.py": "def merge_method(**kw):\n    return lambda f: f\n",
}
REAL = ["mergekit/sparsify.py"] + [f"mergekit/merge_methods/{m}.py" for m in
        ["rectify_embed", "generalized_task_arithmetic", "linear", "slerp", "nuslerp", "multislerp", "karcher",
         "model_stock", "nearswap", "arcee_fusion", "ram", "sce"]]


def load_mergekit(src):
    root = tempfile.mkdtemp(prefix="mk-")
    for path, text in STUBS.items():
        os.makedirs(os.path.join(root, os.path.dirname(path)), exist_ok=True)
        open(os.path.join(root, path), "w").write(text)
    for path in REAL:
        shutil.copy(os.path.join(src, path), os.path.join(root, path))
    sys.path.insert(0, root)
    import importlib
    return {m.split("/")[-1][:-3]: importlib.import_module(m[:-3].replace("/", ".")) for m in REAL}


def main():
    src, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    mk = load_mergekit(src)
    gta, sp = mk["generalized_task_arithmetic"], mk["sparsify"]
    from mergekit.architecture import WeightInfo
    cases = {}

    def case(name, method, tensors, base, output, globals_=None, per_model=None, is_embed=False):
        d = {f"input.{i}": t.contiguous() for i, t in enumerate(tensors)}
        d["output"] = output.contiguous()
        meta = {"method": method, "base": str(base), "is_embed": str(int(is_embed)),
                "globals": json.dumps(globals_ or {}), "per_model": json.dumps(per_model or [{} for _ in tensors])}
        save_file(d, os.path.join(out, name + ".safetensors"), metadata=meta)
        cases[name] = method

    def self_(**kw):
        return types.SimpleNamespace(**kw)

    g = torch.Generator().manual_seed(0)
    def rnd(*shape):
        return torch.randn(*shape, generator=g)

    # Three 2-D tensors near a base (fine-tunes) and a 1-D one.
    for shape_name, shape in [("mat", (6, 10)), ("vec", (12,))]:
        b = rnd(*shape)
        xs = [b + 0.3 * rnd(*shape) for _ in range(3)]
        keys = ["base", "m0", "m1", "m2"]
        all_ = [b] + xs
        D = dict(zip(keys, all_))
        wi = WeightInfo(name="model.layers.0.mlp.up_proj.weight")
        weights = [0.7, 0.4, 1.2]

        # linear: base as a source with a weight too
        w4 = [0.5] + weights
        res = mk["linear"].LinearMergeTask.execute(self_(tensor_parameters={k: {"weight": w} for k, w in zip(keys, w4)}, normalize=True,
                                                         weight_info=wi), tensors=dict(D))
        case(f"linear_{shape_name}", "linear", all_, -1, res, {"normalize": True}, [{"weight": w} for w in w4])
        res = mk["linear"].LinearMergeTask.execute(self_(tensor_parameters={k: {"weight": w} for k, w in zip(keys, w4)}, normalize=False,
                                                         weight_info=wi), tensors=dict(D))
        case(f"linear_raw_{shape_name}", "linear", all_, -1, res, {"normalize": False}, [{"weight": w} for w in w4])

        # GTA family (deterministic ones): base first
        for method, cons, spm, norm, resc, extra in [
                ("task_arithmetic", None, None, False, False, {}),
                ("ties", "sum", "magnitude", True, False, {}),
                ("ties", "sum", "magnitude", False, True, {}),
                ("breadcrumbs", None, "magnitude_outliers", False, False, {"gamma": 0.1}),
                ("breadcrumbs_ties", "sum", "magnitude_outliers", True, True, {"gamma": 0.1})]:
            densities = [0.5, 0.7, 0.4] if spm else [1.0, 1.0, 1.0]
            tp = {"base": {}}
            per_model = [{}]
            for k, w, dn in zip(keys[1:], weights, densities):
                tp[k] = dict({"weight": w, "density": dn}, **extra)
                per_model.append(tp[k])
            meth = types.SimpleNamespace(consensus_method=cons, sparsification_method=spm and sp.SparsificationMethod(spm))
            task = self_(weight_info=wi, base_model="base", tensor_parameters=mk["common"].ImmutableMap(tp) if "common" in mk else tp,
                         method=meth, rescale_norm=sp.RescaleNorm.l1 if resc else None, int8_mask=False, normalize=norm, lambda_=0.9)
            task.tensor_parameters = types.SimpleNamespace(data=tp)
            res = gta.GTATask.execute(task, tensors=dict(D))
            case(f"{method}_{'n' if norm else 'u'}{'r' if resc else ''}_{shape_name}", method, all_, 0, res,
                 {"normalize": norm, "rescale": resc, "lambda": 0.9}, per_model)

        # slerp (base = v0), several t
        for t in (0.0, 0.35, 1.0):
            res = mk["slerp"].SlerpTask.execute(self_(base_model="base", t=t, weight_info=wi), tensors={"base": b, "m0": xs[0]})
            case(f"slerp_{t}_{shape_name}", "slerp", [b, xs[0]], 0, res, {"t": t})
        # nuslerp: with and without base, flatten / row-wise
        for flatten, row_wise in ((True, False), (False, False), (False, True)):
            tp = {"m0": {"weight": 0.3}, "m1": {"weight": 0.9}}
            res = mk["nuslerp"].NuSlerpTask.execute(self_(tensor_parameters=tp, weight_info=wi, row_wise=row_wise, flatten=flatten, base_model=None),
                                                    tensors={"m0": xs[0], "m1": xs[1]})
            case(f"nuslerp_{int(flatten)}{int(row_wise)}_{shape_name}", "nuslerp", [xs[0], xs[1]], -1, res,
                 {"nuslerp_flatten": flatten, "nuslerp_row_wise": row_wise}, [{"weight": 0.3}, {"weight": 0.9}])
            res = mk["nuslerp"].NuSlerpTask.execute(self_(tensor_parameters=tp, weight_info=wi, row_wise=row_wise, flatten=flatten, base_model="base"),
                                                    tensors={"base": b, "m0": xs[0], "m1": xs[1]})
            case(f"nuslerp_base_{int(flatten)}{int(row_wise)}_{shape_name}", "nuslerp", [b, xs[0], xs[1]], 0, res,
                 {"nuslerp_flatten": flatten, "nuslerp_row_wise": row_wise}, [{}, {"weight": 0.3}, {"weight": 0.9}])
        # multislerp
        res = mk["multislerp"].multislerp(tensors=list(xs), weight=weights, base_tensor=b)
        case(f"multislerp_base_{shape_name}", "multislerp", all_, 0, res, {}, [{}] + [{"weight": w} for w in weights])
        res = mk["multislerp"].multislerp(tensors=list(xs), weight=weights)
        case(f"multislerp_{shape_name}", "multislerp", xs, -1, res, {}, [{"weight": w} for w in weights])
        # karcher
        res = mk["karcher"].KarcherTask.execute(self_(weight_info=wi, max_iter=10, tol=1e-5), tensors={"m0": xs[0], "m1": xs[1], "m2": xs[2]})
        case(f"karcher_{shape_name}", "karcher", xs, -1, res, {"max_iter": 10, "tol": 1e-5})
        # model_stock
        for fw in (False, True):
            res = mk["model_stock"].ModelStockMergeTask.execute(self_(base_model="base", weight_info=wi, filter_wise=fw,
                                                                      get_rectified_weights=lambda t: mk["model_stock"].ModelStockMergeTask.get_rectified_weights(
                                                                          self_(base_model="base", weight_info=wi), t)),
                                                                tensors=dict(D))
            case(f"model_stock_{int(fw)}_{shape_name}", "model_stock", all_, 0, res, {"filter_wise": fw})
        # nearswap
        res = mk["nearswap"].nearswap_merge(tensors=[xs[0]], base_tensor=b, t=0.2)
        case(f"nearswap_{shape_name}", "nearswap", [b, xs[0]], 0, res, {"t": 0.2})
        # arcee_fusion (deterministic below a million elements)
        af = mk["arcee_fusion"]
        task = self_(base_model="base", weight_info=wi)
        task._compute_importance = lambda p, bp, eps=1e-8: af.ArceeFusionMergeTask._compute_importance(task, p, bp, eps)
        res = af.ArceeFusionMergeTask.execute(task, tensors={"base": b, "m0": xs[0]})
        case(f"arcee_fusion_{shape_name}", "arcee_fusion", [b, xs[0]], 0, res.to(b.dtype), {})
        # ram / ramplus_tl: sparse deltas so that some elements are unique, some shared
        sparse = [b + 0.3 * rnd(*shape) * (torch.rand(*shape, generator=g) < 0.4) for _ in range(3)]
        res = mk["ram"].ram_merge(tensors=list(sparse), base_tensor=b, epsilon=1e-5)
        case(f"ram_{shape_name}", "ram", [b] + sparse, 0, res, {"epsilon": 1e-5})
        res = mk["ram"].ramplus_tl_merge(tensors=list(sparse), base_tensor=b, r=0.1, alpha=0.2, epsilon=1e-5)
        case(f"ramplus_tl_{shape_name}", "ramplus_tl", [b] + sparse, 0, res.to(b.dtype), {"r": 0.1, "alpha": 0.2, "epsilon": 1e-5})
        # sce
        for topk in (1.0, 0.5):
            res = mk["sce"].sce_merge(tensors=list(xs), base_tensor=b, int8_mask=False, select_topk=topk)
            case(f"sce_{topk}_{shape_name}", "sce", all_, 0, res, {"select_topk": topk})

    # Embeddings of different vocabulary sizes: mergekit's rectification.
    e = [rnd(9, 4), rnd(7, 4), rnd(8, 4)]
    wi = WeightInfo(name="model.embed_tokens.weight", is_embed=True)
    keys = ["m0", "m1", "m2"]
    res = mk["linear"].LinearMergeTask.execute(self_(tensor_parameters={k: {"weight": 1.0} for k in keys}, normalize=True, weight_info=wi),
                                               tensors=dict(zip(keys, e)))
    case("linear_embed_rectified", "linear", e, -1, res, {"normalize": True}, [{"weight": 1.0}] * 3, is_embed=True)
    json.dump(cases, open(os.path.join(out, "cases.json"), "w"), indent=1, sort_keys=True)
    print(f"{len(cases)} cases written to {out}")


if __name__ == "__main__":
    main()
