"""``ser-ray sample``: the choice of segments to label (mix, caps, seed), the labelling folder
(sheet, clips, sample.json) and the labelling page in headless chromium (play, label, save, the
CSV round trip)."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pandas as pd
import pytest

from ser_ray.config import SampleConfig


@pytest.fixture(scope="module")
def nights(ray_session, score_model, tmp_path_factory):
    """Two nights of a synthetic backlog scored into one output."""
    from ser_ray.config import ScoreConfig
    from ser_ray.score import run_score
    from ser_ray.synth import synthesize_backlog

    root = tmp_path_factory.mktemp("sample")
    truth = []
    for k, night in enumerate(("2026-11-21", "2026-11-22")):
        truth.append(synthesize_backlog(root / night, n_calls=4, seed=10 + k, minutes=(0.6, 0.8),
                                        sr=8000, bad=False, speaker_prefix=f"n{k}caller")
                     .assign(run_date=night))
        run_score(ScoreConfig(model=str(score_model), inputs=(str(root / night),),
                              output=str(root / "out"), run_date=night, customer_channel="right"),
                  progress=False)
    pd.concat(truth).to_json(root / "truth.json", orient="records")
    return root


def _truth(nights, sheet: pd.DataFrame) -> list[str]:
    """The synthetic customer's emotion at each segment's middle."""
    truth = pd.read_json(nights / "truth.json", orient="records")
    spans = {(r.run_date, r.call_id): json.loads(r.spans) for r in truth.itertuples()}
    out = []
    for r in sheet.itertuples():
        mid = (r.start_s + r.end_s) / 2
        turns = [t for t in spans[(r.run_date, r.call_id)] if t["role"] == "customer"]
        best = min(turns, key=lambda t: 0 if t["start_s"] <= mid <= t["end_s"]
                   else min(abs(mid - t["start_s"]), abs(mid - t["end_s"])))
        out.append(best["emotion"])
    return out


def _model_of(nights) -> str:
    run = json.loads(next((nights / "out" / "runs").glob("*.json")).read_text())
    return run["model_path"]


def _sample(nights, name, **kw):
    from ser_ray.score.sample import run_sample

    cfg = SampleConfig(scored=str(nights / "out"), output=str(nights / name), **kw)
    record = run_sample(cfg)
    return record, pd.read_csv(nights / name / "sheet.csv", keep_default_na=False)


@pytest.mark.slow
def test_the_choice_mixes_urgent_unsure_and_random_within_the_caps(nights):
    from ser_ray.score import read_calls, read_segments

    record, sheet = _sample(nights, "a", n=14, per_call=3, seed=1)
    assert len(sheet) == 14 and sheet["segment_id"].is_unique
    assert record["counts"] == {"urgent": 4, "uncertain": 4, "random": 6}
    assert sheet.groupby(["run_date", "call_id"]).size().max() <= 3
    assert set(sheet["run_date"]) == {"2026-11-21", "2026-11-22"}
    calls = read_calls(nights / "out")
    segs = read_segments(nights / "out").merge(calls[["run_date", "call_id", "urgency_rank"]])
    # urgent: the top-ranked calls' windows with the most negative emotion
    urgent = sheet[sheet["why"] == "urgent"].merge(segs, on=["run_date", "call_id", "segment_index"])
    assert (urgent["urgency_rank"] == 1).all()
    # uncertain: the smallest margins of what the urgent part left
    rest = segs.assign(segment_id=segs["run_date"] + "/" + segs["call_id"] + "/"
                       + segs["segment_index"].astype(str))
    rest = rest[~rest["segment_id"].isin(sheet.loc[sheet["why"] == "urgent", "segment_id"])]
    unsure = sheet.loc[sheet["why"] == "uncertain", "margin"]
    assert unsure.max() <= np.quantile(rest["margin"], 0.5)
    random_part = sheet[sheet["why"] == "random"]
    assert random_part["predicted"].nunique() >= 2  # stratified (see the test of choose below)
    # the same seed chooses the same; another seed another random part
    again = _sample(nights, "b", n=14, per_call=3, seed=1)[1]
    pd.testing.assert_frame_equal(sheet, again)
    other = _sample(nights, "c", n=14, per_call=3, seed=2)[1]
    assert list(other.loc[other["why"] == "urgent", "segment_id"]) == \
        list(sheet.loc[sheet["why"] == "urgent", "segment_id"])
    assert set(other.loc[other["why"] == "random", "segment_id"]) != \
        set(random_part["segment_id"])
    # one night, and a cap per night
    one = _sample(nights, "d", n=5, run_dates=("2026-11-22",))[1]
    assert set(one["run_date"]) == {"2026-11-22"}
    capped = _sample(nights, "e", n=10, per_night=4)[1]
    assert capped.groupby("run_date").size().max() <= 4 and len(capped) == 8
    saved = json.loads((nights / "a" / "sample.json").read_text())
    assert saved["seed"] == 1 and [s for s, _ in saved["chosen"]] == list(sheet["segment_id"])
    assert saved["labels"][-1] == "unclear" and saved["versions"]


@pytest.mark.slow
def test_clips_hold_the_segment_with_context_at_16k(nights):
    import soundfile as sf

    _, sheet = _sample(nights, "clips", n=6, context_s=1.0)
    for row in sheet.itertuples():
        info = sf.info(nights / "clips" / row.clip)
        assert info.samplerate == 16000 and info.format == "FLAC" and info.channels == 1
        want = (row.end_s - row.start_s) + row.clip_start_s  # context before, at most 1 s after
        assert want - 0.01 <= info.duration <= want + 1.01
        assert 0 <= row.clip_start_s <= 1.0
        y, _ = sf.read(nights / "clips" / row.clip)
        assert np.abs(y).max() > 0.01  # speech, not silence
    assert (sheet["label"] == "").all() and (sheet["note"] == "").all()


def test_the_random_part_is_stratified_by_predicted_label_and_seeded():
    from ser_ray.score.sample import choose

    rng = np.random.default_rng(0)
    n = 400
    label = np.where(rng.random(n) < 0.85, "neutral", rng.choice(["angry", "sad", "calm"], n))
    pool = pd.DataFrame({"segment_id": [f"d/c{i % 40}/{i}" for i in range(n)], "run_date": "d",
                         "call_id": [f"c{i % 40}" for i in range(n)], "label": label,
                         "urgency_rank": 1 + np.arange(n) % 40, "n_t": rng.random(n),
                         "margin": rng.random(n)})
    cfg = SampleConfig(n=40, per_call=40, mix={"urgent": 0, "uncertain": 0, "random": 1}, seed=3)
    got = choose(pool, cfg)
    assert (got["why"] == "random").all() and len(got) == 40
    assert got["label"].value_counts().to_dict() == {"angry": 10, "calm": 10, "neutral": 10, "sad": 10}
    assert list(choose(pool, cfg)["segment_id"]) == list(got["segment_id"])
    other = choose(pool, dataclasses.replace(cfg, seed=4))
    assert list(other["segment_id"]) != list(got["segment_id"])


def test_bad_requests_are_clear_errors(tmp_path):
    from ser_ray.score.sample import run_sample

    with pytest.raises(ValueError, match="--scored"):
        run_sample(SampleConfig(output=str(tmp_path / "x")))
    with pytest.raises(ValueError, match="no committed night"):
        run_sample(SampleConfig(scored=str(tmp_path), output=str(tmp_path / "x")))
    with pytest.raises(ValueError, match="local folder"):
        run_sample(SampleConfig(scored=str(tmp_path), output="s3://b/x"))
    with pytest.raises(ValueError, match="mix"):
        SampleConfig(mix={"loud": 1.0})
    for bad in ({"n": 0}, {"per_call": 0}, {"per_night": 0}, {"context_s": -1}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))}=.* must be"):
            SampleConfig(**bad)
    with pytest.raises(ValueError, match="label_map"):
        SampleConfig(labels=("frustrated", "unclear"), label_map={"angry": "angry"})
    assert SampleConfig(mix={"uncertain": 0.5}).mix == {"urgent": 0.3, "uncertain": 0.5, "random": 0.4}


@pytest.mark.slow
@pytest.mark.browser
def test_the_labelling_page_plays_labels_and_saves_the_sheet(nights, tmp_path):
    from browser_helpers import chrome, console_errors
    from selenium.webdriver.common.by import By

    _, sheet = _sample(nights, "page", n=5, labels=("frustrated", "satisfied", "neutral", "unclear"),
                       label_map={"frustrated": "angry", "satisfied": "calm", "neutral": "neutral"})
    b = chrome("--autoplay-policy=no-user-gesture-required")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    try:
        b.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow",
                                                          "downloadPath": str(downloads)})
        b.get((nights / "page" / "label.html").as_uri())
        assert console_errors(b) == []
        buttons = [x.text for x in b.find_elements(By.CSS_SELECTOR, "#row-0 button.label")]
        assert buttons == ["frustrated", "satisfied", "neutral", "unclear"]
        # the first clip plays
        b.set_script_timeout(30)
        played = b.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const a = document.querySelector('audio.clip');
            a.addEventListener('playing', () => done(['playing', a.duration]));
            a.addEventListener('error', () => done(['error', a.error && a.error.code]));
            a.muted = true; a.preload = 'auto'; a.play().catch(e => done(['error', String(e)]));""")
        assert played[0] == "playing" and played[1] > 1, played
        # label: key 1 on the first clip (then the page moves on), a click on the third, a note
        b.find_element(By.TAG_NAME, "body").send_keys("1")
        b.find_element(By.CSS_SELECTOR, "#row-1 button.label[data-label='unclear']").click()
        b.find_element(By.CSS_SELECTOR, "#row-2 button.label[data-label='satisfied']").click()
        note = b.find_element(By.CSS_SELECTOR, "#row-2 input.note")
        note.send_keys('calm, "quiet" voice')
        assert b.find_element(By.ID, "progress").text == "3 / 5 labelled"
        b.find_element(By.ID, "save").click()
        deadline = time.monotonic() + 20
        while not (downloads / "sheet.csv").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        saved = pd.read_csv(downloads / "sheet.csv", keep_default_na=False)
        # a reload keeps the work (local storage)
        b.refresh()
        assert b.find_element(By.ID, "progress").text == "3 / 5 labelled"
    finally:
        b.quit()
    assert list(saved.columns) == list(sheet.columns)
    assert list(saved["label"]) == ["frustrated", "unclear", "satisfied", "", ""]
    assert saved.loc[2, "note"] == 'calm, "quiet" voice'
    pd.testing.assert_frame_equal(saved.drop(columns=["label", "note"]),
                                  sheet.drop(columns=["label", "note"]))


@pytest.mark.slow
def test_evaluate_on_the_labelled_sheet_says_how_many_labels_it_rests_on(nights, tmp_path):
    from ser_ray.learn.labelled import evaluate_labels

    _, sheet = _sample(nights, "eval", n=16, per_call=3)
    sheet["label"] = _truth(nights, sheet)
    sheet.loc[0, "label"] = "unclear"
    sheet.loc[1, "label"] = ""          # not labelled yet
    sheet.to_csv(nights / "eval" / "sheet.csv", index=False)
    truth = pd.read_json(nights / "truth.json", orient="records")
    truth[["call_id", "run_date"]].assign(escalated=truth["negative"].astype(int)).to_csv(
        tmp_path / "outcomes.csv", index=False)
    m = evaluate_labels(_model_of(nights), nights / "eval" / "sheet.csv", tmp_path / "e",
                        outcomes=tmp_path / "outcomes.csv")
    assert m["labelled"]["used"] == 14 and m["labelled"]["unclear"] == 1
    assert m["labelled"]["unlabelled"] == 1 and m["labelled"]["unclear_share"] == pytest.approx(1 / 15)
    lo, hi = m["intervals"]["ua"]
    assert 0 <= lo <= m["ua"] <= hi <= 1 and hi > lo
    assert m["ua"] > 0.25  # the synthetic emotions are learnable: better than chance (4 classes)
    saved = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert saved["ua"] == pytest.approx(m["ua"]) and saved["protocol"] == "labelled"
    summary = (tmp_path / "e" / "summary.md").read_text()
    assert "Rests on 14 labelled segments" in summary
    # the ranking against a call outcome: angry and sad callers are the escalated ones
    esc = m["outcomes"]["escalated"]
    assert esc["calls"] == 8 and esc["positives"] == int(truth["negative"].sum())
    assert esc["auroc"] >= 0.75 and esc["precision@5"] >= 0.6
    assert esc["intervals"]["auroc"][0] <= esc["auroc"] <= esc["intervals"]["auroc"][1]
    assert "Outcome `escalated`" in summary
    # a team label the model does not have, unmapped: a clear error
    sheet.loc[2, "label"] = "frustrated"
    sheet.to_csv(nights / "eval" / "sheet.csv", index=False)
    with pytest.raises(ValueError, match="frustrated"):
        evaluate_labels(_model_of(nights), nights / "eval" / "sheet.csv", tmp_path / "e2")
