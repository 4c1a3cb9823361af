"""What a night cost: the run record's ``cost`` section and the report's cost line.

Reserved resources are what the job held while it ran: the Ray cluster's CPUs and GPUs times
the run's wall time (on a cluster made for the night that is the bill; on a shared cluster it is
an upper bound). The real-time factors divide the audio scored tonight by those core and GPU
seconds; the price comes from ``cost.cpu_hour`` and ``cost.gpu_hour``.
"""

from __future__ import annotations

from typing import Any

from ser_ray.config import CostConfig


def night_cost(audio_s: float, wall_s: float, cpus: float, gpus: float,
               cfg: CostConfig) -> dict[str, Any]:
    """The ``cost`` section of a run record; ``audio_s`` is the audio scored by this run."""
    audio_h = max(float(audio_s), 0.0) / 3600
    cpu_h = float(cpus) * float(wall_s) / 3600
    gpu_h = float(gpus) * float(wall_s) / 3600
    total = cpu_h * cfg.cpu_hour + gpu_h * cfg.gpu_hour
    return {
        "audio_hours": audio_h, "wall_s": float(wall_s),
        "cpus": float(cpus), "gpus": float(gpus),
        "cpu_core_hours": cpu_h, "gpu_hours": gpu_h,
        "real_time_per_core": audio_h / cpu_h if cpu_h > 0 else None,
        "real_time_per_gpu": audio_h / gpu_h if gpu_h > 0 else None,
        "cpu_hour": cfg.cpu_hour, "gpu_hour": cfg.gpu_hour, "currency": cfg.currency,
        "total": total,
        "per_audio_hour": total / audio_h if audio_h > 0 else None,
    }


def _money(value: float, currency: str) -> str:
    amount = f"{value:,.2f}" if value >= 1 else f"{value:.4f}"
    return f"${amount}" if currency == "USD" else f"{amount} {currency}"


def cost_line(run: dict[str, Any]) -> str | None:
    """One line of plain text for the report: what the night cost and why; None without one."""
    c = run.get("cost")
    if not c:
        return None
    cur = c.get("currency", "USD")
    per = c.get("per_audio_hour")
    head = (f"{_money(per, cur)} per audio hour" if per is not None
            else "no audio scored")
    parts = [f"{c['cpu_core_hours']:.2f} CPU core-hours"]
    if c.get("gpu_hours"):
        parts.append(f"{c['gpu_hours']:.2f} GPU-hours")
    rates = [f"{c['real_time_per_core']:,.0f}x real time per core"] \
        if c.get("real_time_per_core") else []
    if c.get("real_time_per_gpu"):
        rates.append(f"{c['real_time_per_gpu']:,.0f}x per GPU")
    return (f"{head}: {_money(c['total'], cur)} for {c['audio_hours']:.2f} h of audio, "
            f"{' and '.join(parts)} reserved ({', '.join(rates) or 'no rate'}; at "
            f"{_money(c['cpu_hour'], cur)} per core-hour, {_money(c['gpu_hour'], cur)} per "
            f"GPU-hour)")
