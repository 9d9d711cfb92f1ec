"""What a card and the rows say, for any card the workflows may report (rendered HTML, no browser).

The promises: a recorder's card says "safe to undock" only when its state is ``safe`` AND the
workflow set ``safe_to_undock``; the headline is one short sentence, the workflow's detail sits in a
``<details>`` element; counters never show more done than the total; device text is escaped.
"""

import re
from html import unescape

from hypothesis import given, strategies as st

from gateway.i18n import use_language
from gateway.web.render import officer_sentence, render_card, render_page, render_screen

STATES = ["docked", "offloading", "waiting-for-receipts", "safe", "attention", "undocked", "error", "failing", "odd-new-state"]
KINDS = ["bodycam", "rapidtest", "signpad", "fingerprint"]
SENTENCE = re.compile(r'<p class="sentence">(.*?)</p>')

cards = st.fixed_dictionaries({
    "device_id": st.text(max_size=20), "kind": st.sampled_from(KINDS), "name": st.text(max_size=30),
    "state": st.sampled_from(STATES), "safe_to_undock": st.booleans(), "detail": st.text(max_size=400),
    "files_total": st.integers(0, 50), "files_ingested": st.integers(0, 200), "files_receipted": st.integers(0, 200),
    "bytes_total": st.integers(0, 10**9), "bytes_ingested": st.integers(0, 10**10), "failures": st.integers(0, 5),
    "officer_name": st.text(max_size=10), "battery_percent": st.none() | st.integers(0, 100),
    "clock_offset_s": st.none() | st.floats(-1e5, 1e5),
})


@given(card=cards, language=st.sampled_from(["zh_CN", "en"]))
def test_a_card_says_safe_only_when_the_workflow_says_so(card, language):
    with use_language(language):
        tone, sentence = officer_sentence(card)
        html = render_card(card)
    safe_words = {"zh_CN": "可以拔出", "en": "Safe to undock"}[language]
    claims_safe = sentence == safe_words
    assert claims_safe == (card["kind"] == "bodycam" and card["state"] == "safe" and card["safe_to_undock"])
    assert (tone == "ok") == claims_safe or card["kind"] != "bodycam"
    assert len(sentence) <= 60 and "\n" not in sentence
    assert unescape(SENTENCE.search(html).group(1)) == sentence  # the headline is the sentence, never the detail
    if card["detail"]:
        assert "<details" in html and "<script" not in html.replace("&lt;script", "")


@given(card=cards)
def test_counters_never_show_more_done_than_the_total(card):
    card["kind"] = "bodycam"
    with use_language("en"):
        html = render_card(card)
    for maximum, value in re.findall(r'<progress max="(\d+)" value="(\d+)">', html):
        assert int(maximum) >= int(value)
    copied = re.search(r"(\d+)/(\d+) files · ([\d.]+) MB / ([\d.]+) MB", html)
    if card["files_total"]:
        done, total, megabytes_done, megabytes_total = copied.groups()
        assert int(done) <= int(total) and float(megabytes_done) <= float(megabytes_total)


def test_a_recorder_copying_and_waiting_says_so_in_chinese():
    card = {"kind": "bodycam", "state": "offloading", "files_total": 10, "files_ingested": 3}
    with use_language("zh_CN"):
        assert officer_sentence(card) == ("wait", "请勿拔出：正在复制 3/10")
        assert officer_sentence({**card, "state": "waiting-for-receipts", "files_receipted": 4})[1] == "请勿拔出：等待平台回执 4/10"
        assert officer_sentence({**card, "state": "safe", "safe_to_undock": True}) == ("ok", "可以拔出")
        assert officer_sentence({**card, "state": "attention"}) == ("bad", "请联系证据管理员")


def test_rows_show_their_committed_delivery_state():
    snapshot = {"devices": [], "counts": {"queued": 1},
                "results": [{"evidence_id": "r1", "state": "receipted", "sample_id": "S1", "judgement": "positive"},
                            {"evidence_id": "r2", "state": "queued", "sample_id": "S2", "judgement": "negative"}],
                "signings": [{"evidence_id": "s1", "state": "uploading", "signer": "<b>Li</b>", "role": "party"}]}
    with use_language("zh_CN"):
        html = render_screen(snapshot)
    assert re.search(r'data-evidence="r1" data-state="receipted">.*?阳性.*?平台已回执</td></tr>', html)
    assert re.search(r'data-evidence="r2" data-state="queued">.*?阴性.*?已签名，等待上传</td></tr>', html)
    assert "&lt;b&gt;Li&lt;/b&gt;" in html and "当事人" in html and "正在上传" in html
    assert "没有已接入的设备" in html


def test_the_page_carries_its_own_strings_and_no_inline_script():
    with use_language("zh_CN"):
        page = render_page({"devices": [], "gateway_id": "gw-<1>"})
    assert 'data-live="实时"' in page and 'data-reconnecting="正在重新连接…"' in page and "gw-&lt;1&gt;" in page
    assert re.findall(r"<script[^>]*>", page) == ['<script src="/station.js" defer>'] and "style=" not in page
