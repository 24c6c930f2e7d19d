"""gpu.md from gpu.json (bench/gpu_check.py): every section that has numbers, whatever its status."""
from __future__ import annotations

from typing import Any

from _common import median


def _median(xs: Any) -> float | None:
    return median(xs) if xs else None


def _g(d: Any, *keys: Any, default: Any = None) -> Any:
    for k in keys:
        if not isinstance(d, (dict, list)):
            return default
        try:
            d = d[k]
        except (KeyError, IndexError, TypeError):
            return default
    return default if d is None else d


def _f(x: Any, fmt: str = ".2f", none: str = "–") -> str:
    return none if x is None else format(x, fmt)


def _pct(x: Any) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _syncs(s: Any) -> str:
    if not isinstance(s, dict):
        return "–"
    cuda = s.get("cuda_syncs")
    return f"{s.get('host_reads', 0):.0f}" + ("" if cuda is None else f" / {cuda:.0f}")


def _status(rec: dict[str, Any]) -> str:
    st = rec.get("status", "?")
    out = f"status **{st}**, {_f(rec.get('seconds'), '.0f')} s of a {_f(rec.get('limit_s'), '.0f')} s limit"
    if rec.get("error"):
        out += f" — {rec['error']}"
    return out


def _sites(s: Any) -> list[str]:
    lines = []
    for key in ("read_sites", "cuda_sync_sites"):
        for site, n in (_g(s, key) or {}).items():
            lines.append(f"  - {'host read' if key == 'read_sites' else 'CUDA sync'} ×{n:g}: `{site}`")
    return lines


def _member(rec: dict[str, Any], peak: Any) -> list[str]:
    rows = rec.get("rows") or []
    out = [f"Peak used for MFU: {_f(peak, '.1f')} TFLOP/s dense bf16 (datasheet; every variant is divided by it). "
           "Times are medians of synchronised blocks; host CPU is this process's CPU time per iteration (all "
           "threads): close to the wall time means the host, not the GPU, sets the pace.",
           "", "| variant | ms/it MemberStep | ms/it bare | ratio bare/MemberStep (paired) | it/s | samples/s | "
           "GFLOP/it | TFLOP/s | MFU | host CPU ms/it | aten ops/it MemberStep · bare | host syncs/it (reads / "
           "CUDA) MemberStep · bare | peak GiB | first it s | ms/it bare with flat mix (speed-up) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|"]
    for r in rows:
        pk = r.get("peak_gib") or {}
        ops = r.get("aten_ops_per_it") or {}
        flat = _g(r, "ms_per_it", "bare, flat mix")
        out.append(
            f"| {r['label']} | {_f(_g(r, 'ms_per_it', 'MemberStep'), '.1f')} | "
            f"{_f(_g(r, 'ms_per_it', 'bare'), '.1f')} | "
            f"{_f(r.get('ratio'), '.3f')} ({_f(r.get('ratio_paired'), '.3f')}) | "
            f"{_f(_g(r, 'its_per_s', 'MemberStep'), '.2f')} | {_f(r.get('samples_per_s'), '.1f')} | "
            f"{_f(_g(r, 'flops_per_it', 'MemberStep', default=0) / 1e9, '.1f')} | "
            f"{_f(_g(r, 'tflops', 'MemberStep'), '.3f')} | {_pct(r.get('mfu'))} | "
            f"{_f((_g(r, 'host_cpu_s_per_it', 'MemberStep') or 0) * 1e3, '.1f')} | "
            f"{ops.get('MemberStep', '–')} · {ops.get('bare', '–')} | "
            f"{_syncs(_g(r, 'syncs_per_it', 'MemberStep'))} · {_syncs(_g(r, 'syncs_per_it', 'bare'))} | "
            f"{_f(pk.get('MemberStep'), '.1f')} | {_f(_g(r, 'first_iteration_s', 'MemberStep'), '.2f')} | "
            + (f"{flat:.1f} ({r.get('flat_mix_speedup', 0):.3f}×) |" if flat is not None else "– |"))
    for r in rows:
        sm = r.get("same_math") or {}
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in sm.items() if k not in ("ok", "tolerance"))
        fl = r.get("flags") or {}
        out += ["", f"**{r['label']}**: {r.get('arch')} {r.get('num_feat')}×{r.get('num_block')} "
                f"({_f(r.get('g_params'), ',')} G parameters in {r.get('g_tensors')} tensors), batch "
                f"{r.get('batch')} × {r.get('patch')}² HR, member {r.get('member')} w = {r.get('preference')}, GAN "
                f"{r.get('gan')}, perceptual {r.get('perceptual_net')} {r.get('layers')}; bf16 autocast "
                f"{r.get('bf16_autocast')}, channels_last {r.get('channels_last')}, TF32 cuDNN/cuBLAS "
                f"{fl.get('tf32_cudnn')}/{fl.get('tf32_matmul')}, cudnn.benchmark {fl.get('cudnn_benchmark')}; "
                f"{r.get('reps')} reps × {r.get('iters_per_rep')} it per side, spread (max−min)/median "
                + ", ".join(f"{k} {x:.3f}" for k, x in (r.get("spread") or {}).items())
                + f"; same math after one step from identical states ({'ok' if sm.get('ok') else '**NOT OK**'}, "
                f"relative difference of Adam first moments vs MemberStep, tolerance {sm.get('tolerance')}): "
                f"{diffs}; peak GiB per side {pk_str(r.get('peak_gib'))}. Host syncs of one MemberStep iteration "
                "by call site:"]
        out += _sites(_g(r, "syncs_per_it", "MemberStep")) or ["  - none"]
        out += _loop(r.get("loop_syncs"))
    if rows:
        out += ["", "Host syncs: MemberStep returns its losses and gradient norms as device tensors and reads none of "
                "them, so a step queues its kernels without waiting for the GPU. The training loop (easlurm.train."
                "loop.run_loop) keeps the loss finiteness watch on the device too and syncs only at log steps "
                "(float() of each scalar for TensorBoard, one read of the watch) and checkpoint steps (the weight "
                "check, copying the state to the host): every adam.log_every iterations, not every iteration. On "
                "CPU (the smoke) every read is counted although nothing waits; on CUDA only reads of CUDA tensors "
                "and the calls torch's sync-debug mode flags."]
    j = rec.get("job")
    if j:
        out += ["", f"**Whole job** ({j['label']}, `train_member` for {j['iters']} iterations, "
                f"{j['num_workers']} loader workers, timed by bench/_adam_job.py's JobClock): steady "
                f"{j['steady'] * 1e3:.1f} ms/it (MemberStep alone "
                f"{_f((j.get('memberstep_alone_s') or 0) * 1e3, '.1f')} "
                f"ms/it → ratio alone/steady **{_f(j.get('ratio_alone_to_steady'), '.3f')}**); per steady iteration: "
                f"step {j['step'] * 1e3:.1f} ms, loader wait {j['loader'] * 1e3:.1f} ms, TensorBoard "
                f"{j['tensorboard'] * 1e3:.1f} ms, checkpoint {j['checkpoint'] * 1e3:.1f} ms, other "
                f"{j['other'] * 1e3:.1f} ms; start-up {j['startup']:.1f} s (1-iteration pretrain and the init stage "
                f"before it {_f(j.get('pretrain_and_init_s'), '.1f')} s)."]
    if rec.get("not_in_smoke"):
        out += ["", "Not run in the CPU smoke (on CPU the same computation as a row above): "
                + "; ".join(rec["not_in_smoke"])]
    for what in ("skipped", "failures"):
        if rec.get(what):
            out += ["", f"{what.capitalize()}: " + "; ".join(rec[what])]
    return out


def _loop(ls: Any) -> list[str]:
    """The per-iteration host syncs of the real training loop around MemberStep (section 1's ``loop_syncs``)."""
    if not isinstance(ls, dict):
        return []
    def pair(it: dict[str, Any], part: str) -> str:
        cuda = it.get(f"{part}_cuda")
        return f"{it.get(f'{part}_reads')}" + ("" if cuda is None else f" / {cuda}")

    cells = []
    for it in ls.get("per_iteration") or []:
        what = "checkpoint" if it.get("checkpoint") else "log" if it.get("log") else "plain"
        cells.append(f"iteration {it['iteration']} ({what}): step {pair(it, 'step')}, loop {pair(it, 'loop')}")
    return [f"  - training loop (run_loop with the member trainee, {ls.get('iterations')} iterations, log every "
            f"{ls.get('log_every')}, checkpoint at the end; host reads / CUDA syncs): " + "; ".join(cells)]


def pk_str(pk: Any) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in (pk or {}).items()) or "–"


def _loader(rec: dict[str, Any]) -> list[str]:
    d = rec.get("data") or {}
    out = [f"Demo train shards: {d.get('images')} photos, {_f((d.get('bytes') or 0) / 1e6, '.1f')} MB "
           f"(small photos that sit in the page cache: this measures decoding and cropping, not a file system); "
           f"batch {rec.get('batch')}, {rec.get('patch')} px HR patches, the trainer's loader "
           f"(easlurm.train.member.batches); config workers {rec.get('config_workers')}.",
           "", "| workers | samples/s | first batch s | ÷ bf16 RRDB step's samples/s |", "|---:|---:|---:|---:|"]
    for r in rec.get("rows") or []:
        out.append(f"| {r['workers']} | {_f(r['samples_per_s'], '.0f')} | {_f(r['first_batch_s'], '.2f')} | "
                   f"{_f(r.get('ratio_to_consumer'), '.2f')} |")
    c = rec.get("consumer")
    out += ["", f"Consumer: {c['label']} at {c['samples_per_s']:.1f} samples/s (target: loader ≥ 2×)."
            if c else "Consumer: no bf16 RRDB rate (section 1 did not produce one)."]
    return out


def _ea(rec: dict[str, Any]) -> list[str]:
    fz = rec.get("fitness") or {}
    gen = _g(rec, "generations", "seconds") or []
    out = [f"N = {rec.get('n')}, {rec.get('selection')} selection, {fz.get('tiles')} fitness tiles of "
           f"{fz.get('tile')} px in {fz.get('images')} images of {fz.get('tiles_per_image')} (the config's "
           f"{fz.get('reference')}; the demo gives {fz.get('from_demo_tiles')} tiles from {fz.get('demo_images')} "
           f"photos through FitnessTiles, repeated ×{fz.get('repeated')} and regrouped to reach it), objectives "
           f"averaged per {fz.get('mean')}, eval batch {fz.get('eval_batch')} ({rec.get('batches_per_evaluation')} "
           f"batches per evaluation: batches never straddle two images), perceptual {rec.get('perceptual_net')}; "
           f"cuDNN as the EA job sets it: {rec.get('cudnn')}.",
           "",
           "- population objectives (first evaluations, s): "
           f"{', '.join(_f(x, '.2f') for x in rec.get('initial_evaluations_s') or [])}; "
           f"HR feature cache on: {rec.get('target_cache_on')}; peak {_f(rec.get('peak_gib_eval'), '.1f')} GiB",
           f"- seconds per generation: {', '.join(_f(x, '.2f') for x in gen)} "
           f"({_g(rec, 'generations', 'evaluations')} evaluations in {_g(rec, 'generations', 'count')} generation(s); "
           f"operators {_g(rec, 'generations', 'operators')})",
           f"- one Objectives evaluation: {_f(rec.get('objectives_s'), '.3f')} s; bare (the same batches): "
           + ", ".join(f"{k} {_f(v, '.3f')} s" for k, v in (rec.get("bare_s") or {}).items()),
           f"- **ratio bare (G + VGG(sr), HR features precomputed) / Objectives = "
           f"{_f(rec.get('ratio_bare_vs_objectives'), '.3f')}** (target ≥ 0.9)"]
    if rec.get("hr_feature_gib") is not None:
        out.append(f"- the fitness set's HR features: {rec['hr_feature_gib']:.2f} GiB; HR-side VGG passes per "
                   f"Objectives evaluation: {rec.get('hr_passes_per_evaluation')} (0: cached)")
    mc = rec.get("make_child_s") or {}
    if mc:
        out.append("- make_child alone (operators forced on): " + ", ".join(f"{k} {v:.3f} s" for k, v in mc.items()))
    if rec.get("values"):
        out.append(f"- same math: (f1, f2) of one genome: {rec['values']}")
    pi = rec.get("per_image_batch")
    if pi:
        out.append(f"- **one image's tiles per batch** (eval batch {pi.get('eval_batch')}, {pi.get('batches')} "
                   f"batches): {_f(pi.get('s'), '.3f')} s per evaluation against "
                   f"{_f(pi.get('config_eval_batch_s'), '.3f')} s with the config's: "
                   f"**{_f(pi.get('speedup'), '.2f')}×**; (f1, f2) {pi.get('values')}")
    cb = rec.get("children_batched")
    if cb:
        out.append(f"- **{cb.get('children')} children as one batch** (`ea.batch_children`: stacked weights, "
                   f"vmapped G, one VGG pass; per-image batches): {_f(cb.get('batched_s'), '.3f')} s against "
                   f"{_f(cb.get('one_by_one_s'), '.3f')} s one by one: **{_f(cb.get('speedup'), '.2f')}×**, peak "
                   f"{_f(cb.get('peak_gib'), '.1f')} GiB; objectives' largest relative difference "
                   f"{_f(cb.get('max_rel_diff'), '.1e')}")
    out.append(f"- host syncs per evaluation (reads / CUDA): {_syncs(rec.get('syncs_per_evaluation'))}; per "
               f"make_child: {_syncs(rec.get('syncs_make_child'))}")
    out += _sites(rec.get("syncs_make_child"))
    p = rec.get("projection") or {}
    if p:
        adam = ", ".join(f"{k}: {v / 60:.1f} min" for k, v in (p.get("adam_phase_s") or {}).items())
        out.append(f"- **projected EA phase** ({p.get('generations')} generations): "
                   f"{_f((p.get('ea_phase_s') or 0) / 60, '.1f')} min; one Adam phase ({p.get('adam_iters')} "
                   f"iterations of one member): {adam or '–'}")
    for what in ("skipped", "failures"):
        if rec.get(what):
            out += ["", f"{what.capitalize()}: " + "; ".join(rec[what])]
    return out


def _fusion(rec: dict[str, Any]) -> list[str]:
    st = rec.get("step") or {}
    av = rec.get("averaging") or {}
    out = [f"{rec.get('experts')} RRDB experts, {rec.get('layers')} dynamic convs, "
           f"{_f(rec.get('attention_params'), ',')} attention parameters, expert kernels "
           f"{_f(rec.get('expert_buffers_mib'), '.0f')} MiB; attention kernel {rec.get('att_kernel')}, width "
           f"{rec.get('att_channels')}; flags {rec.get('flags')}.", "",
           f"- fusion_step, batch {st.get('batch')} × {st.get('patch')}² HR: first {_f(st.get('first_s'), '.2f')} s, "
           f"then median {_f(st.get('median_s'), '.3f')} s ({', '.join(_f(x, '.3f') for x in st.get('s') or [])}); "
           f"peak {_f(st.get('peak_gib'), '.1f')} GiB",
           f"- average_attention over {av.get('images')} centre crops of the averaging set (fusion.average_set: "
           f"the demo training photos; LR {av.get('lr_shapes')}): first "
           f"{_f(av.get('first_s'), '.2f')} s, then {_f(av.get('s'), '.2f')} s = {_f(av.get('s_per_image'), '.3f')} "
           f"s/image → {_f(av.get('projected_s'), '.1f')} s for {av.get('projected_images')} images; peak "
           f"{_f(av.get('peak_gib'), '.1f')} GiB",
           f"- host syncs (reads / CUDA): per fusion_step {_syncs(rec.get('syncs_per_step'))}, per averaged image "
           f"{_syncs(rec.get('syncs_averaging_one_image'))}"]
    if rec.get("oom"):
        out.append(f"- out of memory: {rec['oom']}")
    p = rec.get("projection") or {}
    if p.get("training_s") is not None:
        out.append(f"- projected training ({p['fusion_iters']} iterations): {p['training_s'] / 60:.1f} min")
    return out


def _real_run(rec: dict[str, Any]) -> list[str]:
    out = [f"`python -m easlurm.launch --config {rec.get('config')} --executor local --run-dir RUN` with "
           f"`{' '.join('--set ' + o for o in rec.get('overrides') or [])}`", "",
           "| stage | tasks | wall s (launcher) | started at s |", "|---|---:|---:|---:|"]
    for name, s in (rec.get("stages") or {}).items():
        out.append(f"| {name} | {s.get('tasks', '–')} | {_f(s.get('seconds'), '.1f')} | "
                   f"{_f(s.get('started_at_s'), '.1f')} |")
    out += ["", f"Launcher total: {_f(rec.get('launcher_total_s'), '.0f')} s; wall including start-up "
            f"{_f(rec.get('wall_s'), '.0f')} s; exit code {rec.get('exit_code')}."]
    speeds = rec.get("member_iters_per_s")
    if speeds:
        out += ["", f"Members' logged iterations/s (TensorBoard speed/iters_per_s, in step order): {speeds}"]
        alone = rec.get("alone_iters_per_s")
        if alone:
            out.append(f"One member alone on the GPU: {alone['its_per_s']:.2f} it/s ({alone['label']}).")
    if rec.get("results_md"):
        out += ["", "Results table of the run:", "", "```", rec["results_md"].rstrip(), "```"]
    if rec.get("last_task_log"):
        out += ["", f"Last task log ({rec['last_task_log']['path']}):", "", "```",
                rec["last_task_log"]["tail"].rstrip(), "```"]
    return out


def _population(rec: dict[str, Any]) -> list[str]:
    out = ["| RDB conv (cin → cout), k = 5 | separate ms | grouped ms | separate / grouped | in a CUDA graph: "
           "separate / grouped |", "|---|---:|---:|---:|---:|"]
    for r in rec.get("gate") or []:
        graph = (f"{_f(r.get('graph_separate_ms'), '.3f')} / {_f(r.get('graph_grouped_ms'), '.3f')} = "
                 f"{_f(r.get('graph_ratio_separate_to_grouped'), '.2f')}×" if "graph_grouped_ms" in r
                 else r.get("graph_error", "– (no CUDA)"))
        out.append(f"| {r['cin']} → {r['cout']} | {_f(r['separate_ms'], '.3f')} | {_f(r['grouped_ms'], '.3f')} | "
                   f"{_f(r['ratio_separate_to_grouped'], '.2f')}× | {graph} |")
    km = rec.get("k_members") or {}
    if km:
        out += ["", f"k = {km.get('k')} {km.get('config')} members (batch {km.get('batch')}, {km.get('patch')} px): "
                f"{_f(km.get('in_turn_ms_per_member'), '.1f')} ms per member iteration one step each in turn "
                f"(peak {_f(km.get('in_turn_peak_gib'), '.1f')} GiB), {_f(km.get('batched_ms_per_member'), '.1f')} "
                f"ms batched (peak {_f(km.get('batched_peak_gib'), '.1f')} GiB): in turn / batched "
                f"{_f(km.get('ratio_in_turn_to_batched'), '.2f')}×. Above 1 the batched step pays on this card."]
    return out


def _bf16(rec: dict[str, Any]) -> list[str]:
    values = rec.get("values") or {}
    verdict = rec.get("verdict") or {}
    arms = list(values)
    out = [f"{rec.get('config')} members, {rec.get('iters')} iterations each (batch {rec.get('batch')}, "
           f"{rec.get('patch')} px, preference {rec.get('preference')}), from the same initial networks; losses: "
           "means over the last quarter; metrics on the demo val photos.", "",
           "| quantity | " + " | ".join(arms) + " | seed gap | bf16 gap | bf16 within seed noise |",
           "|---|" + "---:|" * (len(arms) + 3)]
    for key, v in verdict.items():
        out.append(f"| {key} | " + " | ".join(_f(values[a].get(key), '.4g') for a in arms)
                   + f" | {_f(v['seed_gap'], '.3g')} | {_f(v['bf16_gap'], '.3g')} | "
                   f"{'yes' if v['within_seed_noise'] else '**no**'} |")
    if rec.get("bf16_within_seed_noise") is not None:
        out += ["", f"**bf16 within seed noise on every quantity: {rec['bf16_within_seed_noise']}** (one seed pair: "
                "a coarse estimate of the noise). Seconds per arm: " + ", ".join(
                    f"{k} {_f(x, '.0f')}" for k, x in (rec.get("arm_seconds") or {}).items())]
    return out


def _mps(rec: dict[str, Any]) -> list[str]:
    out = ["| mode | processes | it/s per member | it/s per GPU | each |", "|---|---:|---:|---:|---|"]
    for label, key in (("time-sliced", "time_sliced"), ("CUDA MPS", "mps")):
        r = rec.get(key) or {}
        if "its_per_s_per_gpu" in r:
            out.append(f"| {label} | {r.get('k')} | {_f(r.get('its_per_s_per_member'), '.2f')} | "
                       f"{_f(r.get('its_per_s_per_gpu'), '.2f')} | "
                       f"{', '.join(_f(x, '.2f') for x in r.get('its_per_s_each') or [])} |")
        elif r:
            out.append(f"| {label} | – | – | – | {r.get('skipped') or r.get('failed')} |")
    out += ["", f"One member alone (section 1, RRDB TF32 MemberStep): {_f(rec.get('alone_its_per_s'), '.2f')} it/s."
            + (f" MPS / time-sliced, per GPU: {_f(_g(rec, 'mps', 'vs_time_sliced'), '.2f')}×."
               if _g(rec, "mps", "vs_time_sliced") else "")]
    return out


def _graph(rec: dict[str, Any]) -> list[str]:
    out = ["| variant | eager ms/it | graph ms/it | eager / graph | it/s eager → graph | host CPU share eager → "
           "graph | MFU eager → graph | peak GiB eager / graph | ‖Δw‖/‖w‖ graph vs eager (eager vs eager) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rec.get("rows") or []:
        ms, its, host, mfu, pk, sm = (r.get(k) or {} for k in ("ms_per_it", "its_per_s", "host_cpu_share", "mfu",
                                                               "peak_gib", "same_math"))
        out.append(f"| {r['label']} ({r.get('backend')}) | {_f(ms.get('eager'), '.1f')} | {_f(ms.get('graph'), '.1f')}"
                   f" | {_f(r.get('speedup'), '.2f')}× | {_f(its.get('eager'), '.2f')} → {_f(its.get('graph'), '.2f')}"
                   f" | {_pct(host.get('eager'))} → {_pct(host.get('graph'))} | {_pct(mfu.get('eager'))} → "
                   f"{_pct(mfu.get('graph'))} | {_f(pk.get('eager'), '.1f')} / {_f(pk.get('graph'), '.1f')} | "
                   f"{_f(sm.get('graph_vs_eager'), '.1e')} ({_f(sm.get('eager_vs_eager'), '.1e')}) |")
    out += ["", "Same math: both members start from one seed and train on the same batches for 6 iterations (3 eager "
            "warm-ups, the captured one, 2 replays); the graph's difference from eager should be of the order of "
            "eager's own run-to-run difference. Captures, replays and the first captured iteration's seconds are in "
            "gpu.json."]
    return out


def render(data: dict[str, Any]) -> str:
    meta = data.get("meta", {})
    sec = data.get("sections", {})
    dev = _g(sec, "device", "info") or {}
    peak = dev.get("bf16_peak_tflops")
    lines = [f"# GPU check ({meta.get('mode')})", "",
             f"- command: `{meta.get('command')}` (bench/gpu_check.sh; full numbers in gpu.json)",
             f"- started {meta.get('started')}, finished {meta.get('finished', '(not finished)')}, "
             f"{_f(meta.get('elapsed_s'), '.0f')} s of a {_f(meta.get('budget_s'), '.0f')} s budget",
             f"- device: {dev.get('name', '?')}, {_f(dev.get('memory_gib'), '.0f')} GiB, CUDA {dev.get('cuda')}, "
             f"cuDNN {dev.get('cudnn')}, torch {dev.get('torch')}, Python {dev.get('python')}, "
             f"{dev.get('cpus')} CPU cores",
             f"- dense bf16 peak: {_f(peak, '.1f')} TFLOP/s ({dev.get('bf16_peak_source')}); measured "
             f"{_g(sec, 'device', 'matmul', 'n')}³ {_g(sec, 'device', 'matmul', 'dtype')} matrix product: "
             f"{_f(_g(sec, 'device', 'matmul', 'tflops'), '.1f')} TFLOP/s",
             "", "## Summary", "", "| section | status | headline |", "|---|---|---|"]
    rows = _g(sec, "member_step", "rows") or []
    bf = next((r for r in rows if r.get("label") == "RRDB bf16"), None)
    heads = {
        "device": f"{dev.get('name', '?')}",
        "member_step": (f"RRDB bf16: ratio {_f(bf.get('ratio'), '.3f')} (target ≥ 0.95), "
                        f"{_f(_g(bf, 'its_per_s', 'MemberStep'), '.2f')} it/s, MFU {_pct(bf.get('mfu'))} "
                        f"(target ≥ 35 %), syncs/it {_syncs(_g(bf, 'syncs_per_it', 'MemberStep'))}"
                        if bf else f"{len(rows)} variant(s)"),
        "loader": ", ".join(f"{r['workers']} workers {_f(r.get('ratio_to_consumer'), '.1f')}×"
                            for r in _g(sec, "loader", "rows") or []) + " of the bf16 RRDB step (target ≥ 2×)",
        "ea": (f"{_f(_median(_g(sec, 'ea', 'generations', 'seconds')), '.2f')} s/generation, bare/Objectives "
               f"{_f(_g(sec, 'ea', 'ratio_bare_vs_objectives'), '.3f')} (target ≥ 0.9)"),
        "fusion": (f"step {_f(_g(sec, 'fusion', 'step', 'median_s'), '.3f')} s, peak "
                   f"{_f(_g(sec, 'fusion', 'step', 'peak_gib'), '.1f')} GiB; averaging "
                   f"{_f(_g(sec, 'fusion', 'averaging', 's_per_image'), '.3f')} s/image"),
        "real_run": f"{_f(_g(sec, 'real_run', 'launcher_total_s'), '.0f')} s, exit {_g(sec, 'real_run', 'exit_code')}",
        "extras": ", ".join(f"{r['label']}: {_f(r.get('ratio'), '.3f')}, "
                            f"{_f(_g(r, 'its_per_s', 'MemberStep'), '.2f')} it/s"
                            for r in _g(sec, "extras", "rows") or [])
        + (f"; job ratio alone/steady {_f(_g(sec, 'extras', 'job', 'ratio_alone_to_steady'), '.3f')}"
           if _g(sec, "extras", "job") else ""),
        "graph": ", ".join(f"{r['label']}: eager / graph {_f(r.get('speedup'), '.2f')}×, "
                           f"{_f(_g(r, 'its_per_s', 'graph'), '.2f')} it/s"
                           for r in _g(sec, "graph", "rows") or []),
        "bf16": f"bf16 within seed noise: {_g(sec, 'bf16', 'bf16_within_seed_noise')}",
        "mps": (f"{_f(_g(sec, 'mps', 'time_sliced', 'its_per_s_per_gpu'), '.2f')} it/s per GPU time-sliced, "
                f"{_f(_g(sec, 'mps', 'mps', 'its_per_s_per_gpu'), '.2f')} under MPS"),
        "population": (f"gate: separate / grouped {_f(_g(sec, 'population', 'gate_total', 'ratio'), '.2f')}×; "
                       f"k = 4 in turn / batched "
                       f"{_f(_g(sec, 'population', 'k_members', 'ratio_in_turn_to_batched'), '.2f')}×"),
    }
    for name, rec in sec.items():
        lines.append(f"| {rec.get('title', name)} | {rec.get('status')} | {heads.get(name, '')} |")
    render_fn = {"member_step": lambda r: _member(r, peak), "extras": lambda r: _member(r, peak),
                 "loader": _loader, "ea": _ea, "fusion": _fusion, "real_run": _real_run, "population": _population,
                 "graph": _graph, "mps": _mps, "bf16": _bf16}
    for name, rec in sec.items():
        lines += ["", f"## {rec.get('title', name)}", "", _status(rec)]
        if name in render_fn:
            try:
                lines += [""] + render_fn[name](rec)
            except Exception as exc:  # noqa: BLE001 - a half-filled record must not stop the file being written
                lines += ["", f"(could not render this section: {type(exc).__name__}: {exc}; see gpu.json)"]
        elif name == "device":
            lines += ["", f"- packages: {rec.get('packages')}", f"- weights: {rec.get('weights')}",
                      f"- demo shards: {_g(rec, 'demo')}"]
            if dev.get("nvidia_smi"):
                lines += ["", "```", dev["nvidia_smi"], "```"]
        if rec.get("traceback"):
            lines += ["", "```", rec["traceback"].rstrip(), "```"]
    return "\n".join(lines) + "\n"
