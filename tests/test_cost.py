"""What a night cost (#29, part 4): reserved core- and GPU-hours, real-time factors, the price."""

from __future__ import annotations

import pytest

from ser_ray.config import CostConfig, ScoreConfig, load
from ser_ray.score.cost import cost_line, night_cost


def test_cost_is_reserved_time_at_the_configured_prices():
    # 4,000 h of customer speech in 2 h on 80 cores: 160 core-hours, 25x real time per core
    c = night_cost(4000 * 3600, 2 * 3600, 80, 0, CostConfig(cpu_hour=0.05))
    assert c["cpu_core_hours"] == 160 and c["gpu_hours"] == 0
    assert c["real_time_per_core"] == pytest.approx(25.0) and c["real_time_per_gpu"] is None
    assert c["total"] == pytest.approx(8.0) and c["per_audio_hour"] == pytest.approx(0.002)
    line = cost_line({"cost": c})
    assert line.startswith("$0.0020 per audio hour: $8.00 for 4000.00 h of audio")
    assert "25x real time per core" in line and "GPU-hours reserved" not in line
    g = night_cost(1800, 60, 16, 1, CostConfig(cpu_hour=0.1, gpu_hour=3.0, currency="EUR"))
    assert g["gpu_hours"] == pytest.approx(60 / 3600) and g["real_time_per_gpu"] == 30
    assert g["total"] == pytest.approx(16 * 60 / 3600 * 0.1 + 60 / 3600 * 3.0)
    assert "EUR per audio hour" in cost_line({"cost": g}) and "30x per GPU" in cost_line({"cost": g})
    none = night_cost(0, 10, 2, 0, CostConfig())
    assert none["per_audio_hour"] is None and cost_line({"cost": none}).startswith("no audio")
    assert cost_line({}) is None


def test_prices_are_checked():
    with pytest.raises(ValueError, match="must be >= 0"):
        CostConfig(cpu_hour=-1)
    cfg = load(ScoreConfig, None, model="m", inputs=["i"], output="o", cost={"gpu_hour": 4})
    assert cfg.cost.gpu_hour == 4 and cfg.cost.cpu_hour == 0.05
