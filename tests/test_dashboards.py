"""The Grafana training dashboard charts only what training exports. That every series it queries is exported
is checked by scraping Ray's metrics export while tests/test_train.py's reference run trains
(test_every_series_the_training_dashboard_queries_is_exported there: no training job of its own); here, the
dashboard file against the gauges training declares."""

import json

from dashboard_helpers import DASHBOARD, dashboard_series

from pea.train.gauges import NAMES


def test_the_training_dashboard_charts_the_declared_gauges_per_language():
    wanted = dashboard_series()
    assert len(wanted) >= 6
    assert wanted <= {f"ray_pea_train_{name}" for name in NAMES}, sorted(wanted)
    assert json.loads(DASHBOARD.read_text())["templating"]["list"][1]["name"] == "lang"
