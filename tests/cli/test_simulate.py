"""The traffic simulator: statistics of the generated traffic, and the sender over real HTTP."""

from __future__ import annotations

import json
import socket
import threading
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, parse_qsl, urlsplit

import pytest
from hypothesis import given, strategies as st

from dlrlens import cli, simulate
from dlrlens.simulate import (
    FORM_CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    Receipt,
    encode_receipt,
    generate_traffic,
    post_url,
    send,
)
from dlrlens.statuses import status_table
from dlrlens.store.events import DEFAULT_OPT_OUT_KEYWORDS, normalise_reply

START = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
TABLE = {s.name: s for s in status_table()}

# Bodies shaped like Mobivate's documented examples (values of our own), kept in the repository.
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mobivate"
REFERENCE_JSON = (FIXTURES / "receipt.json").read_text()
REFERENCE_FORM = (FIXTURES / "receipt-form.txt").read_text().strip()


@pytest.fixture(scope="module")
def traffic():
    """One sizeable run, shared by the statistics tests (generation is pure)."""
    return generate_traffic(6, 6000, seed=7, start=START, duplicates=0.05, xml_share=0.3,
                            out_of_order=0.02)


def originals(posts):
    return [p for p in posts if not p.duplicate]


def by_message(posts):
    """Each message's distinct receipts (duplicates dropped), in created order."""
    grouped = defaultdict(list)
    for post in originals(posts):
        grouped[post.receipt.delivery_message_id].append(post.receipt)
    for receipts in grouped.values():
        receipts.sort(key=lambda r: r.created)
    return grouped


def final_status(receipts):
    finals = {r.status for r in receipts if TABLE[r.status].category != "pending"}
    assert len(finals) <= 1, finals
    return finals.pop() if finals else None


def parse_body(post):
    """Read a post back the way a collector would, independently of the simulator's code."""
    if post.content_type == JSON_CONTENT_TYPE:
        return json.loads(post.body)
    assert post.content_type == FORM_CONTENT_TYPE
    form = parse_qs(post.body.decode("ascii"), strict_parsing=True)
    assert list(form) == ["xml"]
    root = ET.fromstring(form["xml"][0])
    assert root.tag == "deliveryreceipt"
    return {child.tag: child.text for child in root}


def parse_created(text):
    return datetime.fromisoformat(text.replace("+0000", "+00:00"))


# ---------------------------------------------------------------- wire formats


def test_json_form_reproduces_the_documented_receipt():
    reference = json.loads(REFERENCE_JSON)
    receipt = Receipt(
        delivery_message_id=reference["deliveryMessageId"], batch_id=reference["batchId"],
        client_reference=None, created=parse_created(reference["created"]),
        created_text=reference["created"], status="ACCEPTED", status_code=2, parts=1, part=None,
        source_format="json",
    )
    body, content_type = encode_receipt(receipt)
    assert content_type == "application/json"
    decoded = json.loads(body)
    assert decoded == reference
    assert list(decoded) == list(reference)  # same field order too


def test_xml_form_reproduces_the_documented_receipt_byte_for_byte():
    receipt = Receipt(
        delivery_message_id="7d0b9c3e-2a51-4f8e-b6d4-91e0c5a7f213", batch_id="IGNORED",
        client_reference="order-88213-reminder",
        created=datetime(2026, 11, 18, 9, 41, 7, 250000, tzinfo=timezone.utc),
        created_text="2026-11-18T09:41:07.250Z", status="DELIVERED", status_code=1, parts=1,
        part=1, source_format="xml",
    )
    body, content_type = encode_receipt(receipt)
    assert content_type == "application/x-www-form-urlencoded"
    assert body.decode("ascii") == REFERENCE_FORM


def test_every_body_reads_back_as_its_receipt(traffic):
    null_references = 0
    for post in traffic:
        fields, receipt = parse_body(post), post.receipt
        assert fields["deliveryMessageId"] == receipt.delivery_message_id
        assert fields["status"] == receipt.status
        assert int(fields["statusCode"]) == receipt.status_code == TABLE[receipt.status].code
        assert int(fields["parts"]) == receipt.parts
        assert parse_created(fields["created"]) == receipt.created
        assert fields["created"] == receipt.created_text
        if receipt.source_format == "json":
            assert list(fields) == list(json.loads(REFERENCE_JSON))
            assert fields["batchId"] == receipt.batch_id and fields["hlr"] is None
            assert fields["clientReference"] == receipt.client_reference
        else:
            assert 1 <= int(fields["part"]) == receipt.part <= receipt.parts
            assert fields.get("clientReference") == receipt.client_reference
        null_references += receipt.client_reference is None
    assert 0.1 * len(traffic) < null_references < 0.9 * len(traffic)


def test_created_uses_every_offset_and_precision_variant(traffic):
    def variant(text):
        offset = "Z" if text.endswith("Z") else text[-6:] if text[-3] == ":" else text[-5:]
        return offset, "." in text
    seen = Counter(variant(p.receipt.created_text) for p in traffic)
    assert set(seen) == {(o, ms) for o in ("+00:00", "+0000", "Z") for ms in (True, False)}
    assert all(count > 0.03 * len(traffic) for count in seen.values())


# ---------------------------------------------------------------- statistics


def test_same_seed_same_traffic_other_seed_other_traffic():
    def fingerprint(posts):
        return [(p.body, p.due, p.labels, p.duplicate, p.out_of_order) for p in posts]
    first = generate_traffic(3, 400, seed=11, start=START)
    assert fingerprint(first) == fingerprint(generate_traffic(3, 400, seed=11, start=START))
    assert fingerprint(first) != fingerprint(generate_traffic(3, 400, seed=12, start=START))


def test_message_count_and_campaign_labels(traffic):
    messages = by_message(traffic)
    assert len(messages) == 6000
    campaign_of_message = {p.receipt.delivery_message_id: p.campaign for p in traffic}
    campaigns = Counter(campaign_of_message.values())
    assert set(campaigns) == {p.name for p in simulate.CAMPAIGNS[:6]}
    assert sum(campaigns.values()) == 6000
    assert max(campaigns.values()) > 2 * min(campaigns.values())  # uneven, as real campaigns
    assert all(dict(p.labels)["team"] for p in traffic)


def test_every_message_starts_with_accepted_in_created_order(traffic):
    for receipts in by_message(traffic).values():
        accepted = [r for r in receipts if r.status == "ACCEPTED"]
        assert len(accepted) == (receipts[0].parts if receipts[0].source_format == "xml" else 1)
        assert receipts[0].status == "ACCEPTED"
        assert all(r.created >= max(a.created for a in accepted)
                   for r in receipts if r.status != "ACCEPTED")


def test_final_mix_pending_share_and_interims(traffic):
    messages = by_message(traffic)
    finals = Counter(final_status(receipts) for receipts in messages.values())
    pending = finals.pop(None)
    assert 0.03 <= pending / len(messages) <= 0.05
    delivered_share = finals["DELIVERED"] / sum(finals.values())
    assert 0.88 <= delivered_share <= 0.93
    failures = {s for s in finals if s != "DELIVERED"}
    assert {"EXPIRED", "UNDELIVERABLE", "REJECTED", "FAILED_RECIPIENT_BLACKLISTED", "UNKNOWN",
            "FAILED_NOROUTE", "FAILED_EXHAUSTED"} <= failures
    assert max(finals[s] for s in failures) < 0.05 * len(messages)
    interims = Counter(r.status for receipts in messages.values() for r in receipts
                       if r.status in ("INTERIM_QUEUED", "INTERIM_ACKNOWLEDGED", "RETRY"))
    assert set(interims) == {"INTERIM_QUEUED", "INTERIM_ACKNOWLEDGED", "RETRY"}
    assert interims["INTERIM_QUEUED"] < 0.5 * sum(len(r) for r in messages.values())


def test_all_statuses_are_documented(traffic):
    seen = {p.receipt.status for p in traffic}
    assert seen <= set(TABLE)
    assert len(seen) >= 12


def test_final_delays_are_long_tailed(traffic):
    delays = []
    for receipts in by_message(traffic).values():
        if final_status(receipts):
            delays.append((receipts[-1].created - receipts[0].created).total_seconds())
    delays.sort()
    median = delays[len(delays) // 2]
    assert 1 < median < 60
    assert sum(d <= 600 for d in delays) / len(delays) > 0.85
    assert sum(d > 3600 for d in delays) / len(delays) > 0.01  # a tail of hours


def test_campaigns_differ_in_quality_and_batches(traffic):
    delivered, finals, batches, references = Counter(), Counter(), defaultdict(set), defaultdict(set)
    for receipts_posts in _posts_by_message(traffic).values():
        campaign = receipts_posts[0].campaign
        status = final_status([p.receipt for p in receipts_posts])
        batches[campaign].add(receipts_posts[0].receipt.batch_id)
        references[campaign].add(receipts_posts[0].receipt.client_reference is None)
        if status:
            finals[campaign] += 1
            delivered[campaign] += status == "DELIVERED"
    rates = {c: delivered[c] / finals[c] for c in finals}
    assert rates["otp-login"] - rates["winback-spring-sale"] > 0.05
    assert all(1 <= len(ids) <= 4 for ids in batches.values())
    all_batches = [b for ids in batches.values() for b in ids]
    assert len(all_batches) == len(set(all_batches))  # a batch belongs to one campaign
    # A campaign either sets references on all its messages or on none.
    assert all(len(flags) == 1 for flags in references.values())
    assert {flag for flags in references.values() for flag in flags} == {True, False}


def _posts_by_message(posts):
    grouped = defaultdict(list)
    for post in originals(posts):
        grouped[post.receipt.delivery_message_id].append(post)
    return grouped


def test_duplicates_repeat_an_earlier_post(traffic):
    first_due = {}
    for post in originals(traffic):
        first_due.setdefault(post.body, post.due)
    duplicates = [p for p in traffic if p.duplicate]
    assert 0.04 <= len(duplicates) / len(originals(traffic)) <= 0.06
    assert all(p.body in first_due and p.due > first_due[p.body] for p in duplicates)
    assert len({p.body for p in originals(traffic)}) == len(originals(traffic))


def test_xml_share_counts_messages(traffic):
    formats = {r[0].delivery_message_id: r[0].source_format for r in by_message(traffic).values()}
    share = Counter(formats.values())["xml"] / len(formats)
    assert 0.27 <= share <= 0.33
    assert all((p.content_type == FORM_CONTENT_TYPE) == (p.receipt.source_format == "xml")
               for p in traffic)
    none = generate_traffic(2, 300, seed=1, start=START, xml_share=0.0, duplicates=0.0)
    assert {p.content_type for p in none} == {JSON_CONTENT_TYPE}
    assert not any(p.duplicate for p in none)


def test_posts_follow_created_order_except_deliberate_ones(traffic):
    assert [p.due for p in traffic] == sorted(p.due for p in traffic)
    regular = [p for p in traffic if not p.duplicate and not p.out_of_order]
    assert all(p.due == p.receipt.created for p in regular)
    assert [p.receipt.created for p in regular] == sorted(p.receipt.created for p in regular)

    late = [p for p in originals(traffic) if p.out_of_order]
    assert 0.01 * 6000 <= len(late) <= 0.03 * 6000
    position = {id(p): i for i, p in enumerate(traffic)}
    grouped = _posts_by_message(traffic)
    for post in late:
        final = next(p for p in grouped[post.receipt.delivery_message_id] if p.receipt.is_final)
        assert TABLE[post.receipt.status].category == "pending"
        assert post.receipt.created < final.receipt.created
        assert position[id(post)] > position[id(final)]  # posted after the final


def test_time_scale_compresses_every_duration():
    keys = lambda posts: {(p.receipt.delivery_message_id, p.receipt.status, p.receipt.part,
                           p.duplicate): p.receipt.created for p in posts}
    real = keys(generate_traffic(3, 300, seed=5, start=START))
    fast = keys(generate_traffic(3, 300, seed=5, start=START, time_scale=60))
    assert real.keys() == fast.keys()
    # A message's first receipt lands where it should to within the written precision
    # (later ones are nudged by rounding and the strictly-increasing rule).
    for key, created in real.items():
        if key[1] == "ACCEPTED" and key[2] in (None, 1):
            expected = (created - START).total_seconds() / 60
            assert abs((fast[key] - START).total_seconds() - expected) <= 1.0, key
    real_range = (max(real.values()) - START).total_seconds()
    fast_range = (max(fast.values()) - START).total_seconds()
    assert real_range > 2 * 3600
    assert abs(fast_range - real_range / 60) < 20


def test_until_leaves_out_what_has_not_happened_yet():
    everything = generate_traffic(3, 500, seed=2, start=START)
    until = START + timedelta(hours=2)
    cut = generate_traffic(3, 500, seed=2, start=START, until=until)
    assert cut == [p for p in everything if p.due <= until]
    assert 0 < len(cut) < len(everything)


def test_rejects_bad_arguments():
    for kwargs in ({"duplicates": 1.5}, {"xml_share": -0.1}, {"time_scale": 0}):
        with pytest.raises(ValueError):
            generate_traffic(1, 10, seed=1, start=START, **kwargs)
    with pytest.raises(ValueError):
        generate_traffic(0, 10, seed=1, start=START)
    with pytest.raises(ValueError):
        generate_traffic(1, 10, seed=1, start=datetime(2026, 1, 1))  # naive
    assert generate_traffic(2, 0, seed=1, start=START) == []


def test_more_campaigns_than_the_catalogue_get_distinct_names():
    names = [p.name for p in simulate.campaign_profiles(30)]
    assert len(set(names)) == 30
    assert "black-friday-uk-2" in names and "black-friday-uk-3" in names


# ---------------------------------------------------------------- URLs


def test_post_url_keeps_existing_query_and_adds_labels_and_token():
    url = post_url("http://h:1/dlr?token=s3cret&x=1", [("campaign", "otp-login"), ("team", "a b")])
    assert parse_qsl(urlsplit(url).query) == [("token", "s3cret"), ("x", "1"),
                                               ("campaign", "otp-login"), ("team", "a b")]
    url = post_url("http://h:1/dlr", [("campaign", "c")], token="t&=?")
    assert parse_qsl(urlsplit(url).query) == [("campaign", "c"), ("token", "t&=?")]
    # The given URL's own values win.
    url = post_url("http://h:1/dlr?team=demo", [("campaign", "c"), ("team", "retail")], token="t")
    assert parse_qsl(urlsplit(url).query) == [("team", "demo"), ("campaign", "c"), ("token", "t")]


def test_redact_url_hides_every_form_of_the_secret():
    assert simulate.redact_url("http://h:8/dlr?token=s3cret&a=1") == "http://h:8/dlr?token=***&a=1"
    assert simulate.redact_url("https://dlr:s3cret@h:8/dlr") == "https://dlr:***@h:8/dlr"
    assert simulate.redact_url("http://h/dlr/s3cret?a=1") == "http://h/dlr/***?a=1"
    assert simulate.redact_url("http://h/dlr?a=1") == "http://h/dlr?a=1"


query_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@given(existing=st.lists(st.tuples(st.text("abcxyz", min_size=1, max_size=4), query_text),
                         max_size=4),
       labels=st.lists(st.tuples(st.text("mnopq", min_size=1, max_size=4), query_text),
                       max_size=4, unique_by=lambda kv: kv[0]),
       token=st.none() | query_text)
def test_post_url_round_trips_any_values(existing, labels, token):
    base = post_url("https://example.test/dlr", existing)
    url = post_url(base, labels, token)
    query = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    assert query[: len(existing)] == existing
    assert query[len(existing):] == labels + ([("token", token)] if token is not None else [])
    assert urlsplit(url).path == "/dlr"


# ---------------------------------------------------------------- sender over real HTTP


class Recorder:
    """What the test server received; answers ``fail_first`` requests with ``fail_status``."""

    def __init__(self, fail_first=0, fail_status=503, always=None):
        self.requests = []
        self.lock = threading.Lock()
        self.fail_first, self.fail_status, self.always = fail_first, fail_status, always


@pytest.fixture
def server():
    """Start a recording HTTP server on a free loopback port; yields (base URL, recorder)."""
    recorder = Recorder()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as requests' sessions use
        disable_nagle_algorithm = True  # else each keep-alive answer waits for a delayed ACK

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with recorder.lock:
                recorder.requests.append((self.path, self.headers.get("Content-Type"), body))
                seen = len(recorder.requests)
                status = recorder.always or (
                    recorder.fail_status if seen <= recorder.fail_first else 200)
            payload = b"ok"
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", recorder
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def small_traffic(messages=40, **kwargs):
    kwargs.setdefault("seed", 3)
    return generate_traffic(3, messages, start=START, duplicates=0.1, xml_share=0.4, **kwargs)


def test_send_delivers_every_post_with_labels_token_and_content_type(server):
    base, recorder = server
    posts = small_traffic(60)
    stats = send(posts, f"{base}/dlr?token=s3cret&env=test", concurrency=4, backoff=0.01)
    assert (stats.sent, stats.acked, stats.errors, stats.retries) == (len(posts), len(posts), 0, 0)
    assert not stats.non_200 and stats.ok
    assert len(recorder.requests) == len(posts)
    received = Counter()
    for path, content_type, body in recorder.requests:
        parts = urlsplit(path)
        assert parts.path == "/dlr"
        query = dict(parse_qsl(parts.query))
        assert query["token"] == "s3cret" and query["env"] == "test"
        received[(query["campaign"], query["team"], content_type, body)] += 1
    expected = Counter((p.campaign, dict(p.labels)["team"], p.content_type, p.body) for p in posts)
    assert received == expected
    assert {ct for _, ct, _ in recorder.requests} == {JSON_CONTENT_TYPE, FORM_CONTENT_TYPE}


def test_send_with_one_thread_keeps_the_planned_order(server):
    base, recorder = server
    posts = small_traffic(200, out_of_order=0.3)
    assert any(p.out_of_order for p in posts) and any(p.duplicate for p in posts)
    stats = send(posts, f"{base}/dlr", token="tok", concurrency=1, rate=5000)
    assert stats.acked == len(posts)
    assert [body for _, _, body in recorder.requests] == [p.body for p in posts]
    assert all(dict(parse_qsl(urlsplit(path).query))["token"] == "tok"
               for path, _, _ in recorder.requests)


def test_send_retries_503_then_succeeds(server):
    base, recorder = server
    recorder.fail_first = 3
    posts = small_traffic(10)
    stats = send(posts, f"{base}/dlr", concurrency=1, retries=3, backoff=0.01)
    assert (stats.acked, stats.retries, stats.errors) == (len(posts), 3, 0)
    assert len(recorder.requests) == len(posts) + 3
    # The retried post is the same request again.
    assert recorder.requests[0][2] == recorder.requests[3][2] == posts[0].body


def test_send_gives_up_after_bounded_retries_and_counts_by_status(server):
    base, recorder = server
    recorder.always = 503
    posts = small_traffic(5)
    stats = send(posts, f"{base}/dlr", concurrency=2, retries=2, backoff=0.01)
    assert stats.acked == 0 and stats.non_200 == Counter({503: len(posts)})
    assert stats.retries == 2 * len(posts)
    assert len(recorder.requests) == 3 * len(posts)
    assert not stats.ok
    assert f"{len(posts)}x503" in stats.summary()


def test_send_does_not_retry_a_client_error(server):
    base, recorder = server
    recorder.always = 400
    posts = small_traffic(5)
    stats = send(posts, f"{base}/dlr", concurrency=2, retries=3, backoff=0.01)
    assert stats.non_200 == Counter({400: len(posts)}) and stats.retries == 0
    assert len(recorder.requests) == len(posts)


def test_send_counts_connection_errors_after_retries():
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    posts = small_traffic(5)[:4]
    stats = send(posts, f"http://127.0.0.1:{port}/dlr", concurrency=2, retries=2, backoff=0.01,
                 timeout=2)
    assert (stats.sent, stats.acked, stats.errors, stats.retries) == (4, 0, 4, 8)
    assert "ConnectionError" in stats.summary() and "refused" in stats.summary()
    assert "s3cret" not in simulate.describe_failure(
        ValueError("Max retries exceeded with url: /dlr?token=s3cret&campaign=x"))


def test_cli_run_posts_the_generated_traffic(server, capsys):
    base, recorder = server
    assert cli.main([
        "simulate", "--url", f"{base}/dlr?env=demo", "--campaigns", "2", "--messages", "30", "--seed", "9",
        "--duplicates", "0.1", "--xml-share", "0.5", "--start", "2026-01-05T08:00:00",
        "--time-scale", "10", "--token", "hush", "--concurrency", "2", "--click-share", "0", "--reply-share", "0",
    ]) == 0
    expected = generate_traffic(2, 30, 9, datetime(2026, 1, 5, 8, tzinfo=timezone.utc),
                                duplicates=0.1, xml_share=0.5, time_scale=10)
    assert Counter(body for _, _, body in recorder.requests) == Counter(p.body for p in expected)
    out = capsys.readouterr().out
    assert "seed 9" in out and "30 messages in 2 campaigns" in out
    assert f"{len(expected)} posts" in out and f"{len(expected)} acked" in out
    assert "hush" not in out
    queries = [dict(parse_qsl(urlsplit(path).query)) for path, _, _ in recorder.requests]
    assert all(q["token"] == "hush" and q["env"] == "demo" for q in queries)
    assert {q["campaign"] for q in queries} == {"black-friday-uk", "otp-login"}


def test_cli_rejects_bad_options():
    parser = cli.build_parser("simulate")
    for bad in (["--duplicates", "2"], ["--time-scale", "0"], ["--start", "yesterday"],
                ["--campaigns", "0"], ["--rate", "-1"], ["--data", "somewhere"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["simulate", "--url", "http://x/dlr", *bad])
    args = parser.parse_args(["simulate", "--url", "http://x/dlr", "--start", "2026-01-05T08:00:00"])
    assert args.start == datetime(2026, 1, 5, 8, tzinfo=timezone.utc)  # no offset: UTC


def test_plan_traffic_ends_now_unless_told_otherwise():
    now = datetime(2026, 3, 2, 12, tzinfo=timezone.utc)
    plan = simulate.plan_traffic(2, 200, seed=4, time_scale=60, now=now)
    span = simulate.DEFAULT_SPAN / 60
    assert plan.seed == 4 and plan.start == now - (simulate.DEFAULT_SPAN + simulate.DEFAULT_TAIL_ROOM) / 60
    assert plan.posts == generate_traffic(2, 200, 4, plan.start, time_scale=60, until=now)
    assert max(p.due for p in plan.posts) <= now and min(p.due for p in plan.posts) >= plan.start
    future = simulate.plan_traffic(1, 20, start=now + timedelta(days=1), now=now)
    assert future.posts[-1].due > now + span  # a future start keeps its receipts
    assert 0 <= simulate.plan_traffic(1, 5, now=now).seed < 2**32  # drawn, and printed by the CLI


def test_events_follow_delivered_messages_with_realistic_shares(traffic):
    events = simulate.generate_events(traffic, seed=7, click_share=0.12, reply_share=0.02)
    assert events == simulate.generate_events(traffic, seed=7, click_share=0.12, reply_share=0.02)  # pure
    delivered = {p.receipt.delivery_message_id: p.receipt for p in traffic
                 if not p.duplicate and p.receipt.status == "DELIVERED"}
    clicks = [json.loads(p.body) for p in events if p.endpoint == "click"]
    replies = [json.loads(p.body) for p in events if p.endpoint == "incoming"]
    clicked = {c["messageId"] for c in clicks}
    assert clicked <= set(delivered) and 0.10 < len(clicked) / len(delivered) < 0.14
    assert len(clicks) > len(clicked), "some clickers come back"
    replied = {r["inReplyTo"] or r["logicalMessageId"] for r in replies}
    assert 0.012 < len(replies) / len(delivered) < 0.028 and replied
    opt_outs = [r for r in replies if normalise_reply(r["body"]) in DEFAULT_OPT_OUT_KEYWORDS]
    assert 0.15 < len(opt_outs) / len(replies) < 0.55
    assert any(r["inReplyTo"] is None for r in replies) or len(replies) < 40
    for post in events:
        assert post.receipt is None and post.labels == () and post.content_type == JSON_CONTENT_TYPE
    for click in clicks:
        receipt = delivered[click["messageId"]]
        assert (click["batchId"], click["clientRef"]) == (receipt.batch_id, receipt.client_reference)
    target = clicks[0]["messageId"]
    first_click = min(p.due for p in events if p.endpoint == "click" and json.loads(p.body)["messageId"] == target)
    assert first_click > delivered[target].created
    assert simulate.generate_events(traffic, 7, click_share=0, reply_share=0) == []
    with pytest.raises(ValueError):
        simulate.generate_events(traffic, 7, click_share=1.5)


def test_endpoint_url_swaps_the_dlr_segment():
    assert simulate.endpoint_url("http://h:1/dlr?token=x", "click") == "http://h:1/click?token=x"
    assert simulate.endpoint_url("https://h/hooks/dlr/s3cret", "incoming") == "https://h/hooks/incoming/s3cret"
    assert simulate.endpoint_url("http://h/anything", "dlr") == "http://h/anything"
    with pytest.raises(ValueError, match="no /dlr segment") as refused:
        simulate.endpoint_url("http://h/webhook/s3cret?token=s3cret", "click")
    assert "s3cret" not in str(refused.value)
    assert simulate.redact_url("http://h/click/s3cret") == "http://h/click/***"


def test_cli_posts_clicks_and_replies_beside_the_receipts(server, capsys):
    base, recorder = server
    assert cli.main(["simulate", "--url", f"{base}/dlr/hush", "--campaigns", "2", "--messages", "300", "--seed", "5",
                     "--start", "2026-01-05T08:00:00", "--time-scale", "100", "--click-share", "0.3",
                     "--reply-share", "0.1"]) == 0
    paths = Counter(urlsplit(path).path for path, _, _ in recorder.requests)
    assert set(paths) == {"/dlr/hush", "/click/hush", "/incoming/hush"} and paths["/click/hush"] > 30
    out = capsys.readouterr().out
    assert f"{paths['/click/hush']} clicks to /click, {paths['/incoming/hush']} replies" in out
    assert cli.main(["simulate", "--url", f"{base}/hook", "--messages", "50", "--seed", "1",
                     "--start", "2026-01-05T08:00:00", "--dry-run"]) == 2
    assert "no /dlr segment" in capsys.readouterr().err
