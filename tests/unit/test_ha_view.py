"""The cluster view snapshot: lookups, derived sets, and copy-on-change."""

from __future__ import annotations

import pytest

from pgbalancer.ha.view import BackendRole, BackendState, BackendStatus, ClusterView, initial_view


def three_nodes() -> ClusterView:
    return initial_view(((0, "db0", 5432, 1.0), (1, "db1", 5432, 1.0), (2, "db2", 5432, 0.0)))


def test_initial_view_presumes_backend_zero_primary() -> None:
    view = three_nodes()
    assert view.primary_id == 0 and view.epoch == 0
    assert view.primary is not None and view.primary.address == "db0:5432"
    assert all(state.role is BackendRole.UNKNOWN for state in view)


def test_readable_skips_down_and_zero_weight() -> None:
    view = three_nodes().with_backend(BackendState(1, "db1", 5432, status=BackendStatus.DOWN))
    assert [s.node_id for s in view.readable()] == [0]
    assert [s.node_id for s in view.up_standbys()] == [2]


def test_a_down_primary_is_no_primary() -> None:
    view = three_nodes().with_backend(BackendState(0, "db0", 5432, status=BackendStatus.DOWN))
    assert view.primary_id == 0 and view.primary is None


def test_changes_make_new_views_and_failover_bumps_the_epoch() -> None:
    before = three_nodes()
    after = before.with_primary(1)
    assert (before.primary_id, before.epoch) == (0, 0)
    assert (after.primary_id, after.epoch) == (1, 1)
    assert after.with_primary(1, new_epoch=False).epoch == 1


def test_unknown_node_id_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="no backend 7 \\(known: 0, 1, 2\\)"):
        three_nodes().backend(7)
    assert not three_nodes().has(7)


def test_with_positions_refreshes_lsns_and_lag_and_nothing_else() -> None:
    view = three_nodes().with_backend(BackendState(2, "db2", 5432, status=BackendStatus.DOWN, lag_bytes=7))
    fresh = view.with_positions({0: 10_000, 1: 9_000})
    assert fresh.backend(0).replay_lsn == 10_000 and fresh.backend(0).lag_bytes == 0
    assert fresh.backend(1).replay_lsn == 9_000 and fresh.backend(1).lag_bytes == 1_000
    assert fresh.backend(2) == view.backend(2)  # not read: untouched
    assert (fresh.primary_id, fresh.epoch) == (view.primary_id, view.epoch)
    assert [s.status for s in fresh] == [s.status for s in view]


def test_with_positions_keeps_a_standbys_lag_when_the_primary_was_not_read() -> None:
    view = three_nodes().with_backend(BackendState(1, "db1", 5432, lag_bytes=42))
    fresh = view.with_positions({1: 9_000})
    assert fresh.backend(1).replay_lsn == 9_000 and fresh.backend(1).lag_bytes == 42


def test_quarantine_takes_an_up_backend_out_of_reads_and_leaves_others_alone() -> None:
    view = three_nodes().with_backend(BackendState(2, "db2", 5432, status=BackendStatus.DOWN))
    quarantined = view.quarantined(1)
    assert quarantined.backend(1).status is BackendStatus.QUARANTINED
    assert [s.node_id for s in quarantined.readable()] == [0]
    assert view.backend(1).is_up  # the snapshot it came from is untouched
    assert quarantined.quarantined(2) == quarantined  # down stays down, not merely quarantined
