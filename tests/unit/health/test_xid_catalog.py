import pytest
from gpufleet.gpu.kernel_log import normalize_bus_id, parse_journal_json, parse_xid_line
from gpufleet.health.severity import Severity
from gpufleet.health.xid import XidCatalog


@pytest.fixture(scope="module")
def catalog():
    return XidCatalog.load()


@pytest.mark.parametrize(
    ("code", "severity"),
    [
        (79, "REBOOT"),
        (54, "ISOLATE"),  # auxiliary power not connected: a board fault (CHECK_MECHANICALS)
        (48, "RESET"),
        (46, "RESET"),
        (143, "RESET"),
        (151, "REBOOT"),
        (171, "RESET"),
        (13, "MONITOR"),
        (31, "MONITOR"),
        (43, "MONITOR"),
        (45, "MONITOR"),
        (64, "RESET"),
        (95, "RESET"),
        (119, "RESET"),
        (120, "RESET"),
        (74, "RESET"),
        (92, "MONITOR"),
        (94, "MONITOR"),
    ],
)
def test_catalog_severities(catalog, code, severity):
    assert catalog.lookup(code).severity is Severity[severity]


def test_unknown_code_gets_default(catalog):
    info = catalog.lookup(99999)
    assert not info.known and info.severity is Severity.MONITOR


def test_reboot_class_windows_last_until_reboot(catalog):
    assert catalog.lookup(79).window_seconds is None
    assert catalog.lookup(13).window_seconds == 3600


def test_architecture_override():
    catalog = XidCatalog(
        {"xids": {63: {"bucket": "IGNORE"}}, "buckets": {"IGNORE": {"severity": "MONITOR"}},
         "architectures": {"hopper": {63: {"severity": "RESET"}}}}
    )
    assert catalog.lookup(63).severity is Severity.MONITOR
    info = catalog.lookup(63, "hopper")
    assert info.severity is Severity.RESET and info.source == "architecture:hopper"


def test_every_code_of_nvidias_catalog_is_listed_with_bucket_and_source(catalog):
    assert sorted(catalog.entries) == list(range(1, 173))
    for code in catalog.entries:
        info = catalog.lookup(code)
        assert info.known and info.name and info.action, code
        if info.reference == "nvidia":
            assert info.bucket in catalog.buckets, code
        else:
            assert info.reference == "gpufleet" and 162 <= code <= 172, code


def test_board_fault_xid_54_has_its_bucket(catalog):
    info = catalog.lookup(54)
    assert info.bucket == "CHECK_MECHANICALS" and info.severity is Severity.ISOLATE
    assert "power" in info.name.lower()


@pytest.mark.parametrize("code", list(range(1, 173)))
def test_restart_app_and_ignore_codes_stay_below_the_default_fence(catalog, code):
    info = catalog.lookup(code)
    if info.bucket in ("RESTART_APP", "IGNORE"):
        assert info.severity < Severity.RESET, code


def test_bad_operator_override_names_file_and_code(tmp_path):
    from gpufleet.health.xid import XidCatalogError

    override = tmp_path / "xid-overrides.yaml"
    override.write_text("xids:\n  13: {severity: SEVERE}\n")
    with pytest.raises(XidCatalogError, match=r"xid-overrides.yaml: Xid 13: unknown severity 'SEVERE'"):
        XidCatalog.load(override)
    override.write_text("xids: [1, 2]\n")
    with pytest.raises(XidCatalogError, match="xids"):
        XidCatalog.load(override)


def test_unknown_code_is_counted_every_time_and_logged_once(caplog):
    from gpufleet.health import xid as xid_module

    catalog = XidCatalog.load()
    counted = []
    catalog.on_unknown = counted.append
    xid_module._logged_unknown.discard(9999)
    with caplog.at_level("WARNING", logger="gpufleet.health.xid"):
        for _ in range(3):
            catalog.report_unknown(9999, "something new")
    assert counted == [9999, 9999, 9999]
    assert sum("not in the catalog" in r.getMessage() for r in caplog.records) == 1


def test_operator_override_wins(tmp_path):
    override = tmp_path / "xid-overrides.yaml"
    override.write_text(
        "xids:\n  13: {severity: RESET, action: our fleet resets on 13}\n  63: {severity: ISOLATE}\n"
    )
    catalog = XidCatalog.load(override)
    assert catalog.lookup(13).severity is Severity.RESET
    assert catalog.lookup(13).action == "our fleet resets on 13"
    assert catalog.lookup(63, "hopper").severity is Severity.ISOLATE


def test_xid154_texts(catalog, fixtures_dir):
    rows = [
        line.split("\t")
        for line in (fixtures_dir / "xid154_messages.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert len(rows) >= 6
    for message, expected in rows:
        info = catalog.classify(154, message)
        assert info.severity is Severity[expected.strip()], message
        assert info.source == "recovery-action"


def test_xid154_without_action_keeps_catalog_entry(catalog):
    assert catalog.classify(154, "something unparseable").severity is Severity.MONITOR


def test_kernel_lines_parse(fixtures_dir):
    events = [
        e
        for e in (parse_xid_line(line) for line in (fixtures_dir / "kernel_xid.log").read_text().splitlines())
        if e is not None
    ]
    assert [e.xid for e in events] == [13, 13, 79, 48, 31, 154]
    assert events[2].pci_bus_id == "0000:38:00"
    assert events[2].message.endswith("GPU has fallen off the bus.")
    assert events[4].pci_bus_id == "0000:58:00"  # old format without "PCI:"
    assert "GPU Reset Required" in events[5].message


def test_bus_id_normalisation():
    assert normalize_bus_id("00000000:3B:00.0") == normalize_bus_id("PCI:0000:3b:00") == "0000:3b:00"


def test_journal_json_parse(fixtures_dir):
    lines, cursor = parse_journal_json((fixtures_dir / "journal_kernel.jsonl").read_text(), None)
    assert cursor == "s=aa;i=4;b=b1"
    assert len(lines) == 4
    assert lines[1].timestamp == 1700000100.0
    assert parse_xid_line(lines[3].text).xid == 48  # byte-array MESSAGE decoded


def test_catalog_entries_are_complete(catalog):
    assert len(catalog.entries) == 172
    for code, entry in catalog.entries.items():
        assert entry.get("mnemonic"), code
        assert entry.get("bucket") or entry.get("severity"), code
    for table in catalog.architectures.values():
        for code in table:
            assert code in catalog.entries
    texts = [a["text"] for a in catalog.recovery_actions()]
    assert texts[:5] == ["None", "GPU Reset Required", "Node Reboot Required", "Drain P2P", "Drain and Reset"]
