#!/usr/bin/env python3
"""Parses Prometheus text exposition from stdin with the reference parser
(prometheus_client) and prints every sample as one JSON line:
{"name": ..., "labels": {...}, "value": ...}. Exits non-zero if the text does
not parse."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    text = sys.stdin.read()
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as e:  # the parser raises plain ValueError and friends
        sys.exit(f"metrics do not parse as Prometheus text: {e}")
    if not families:
        sys.exit("no metric families in the exposition")
    for family in families:
        for s in family.samples:
            print(json.dumps({"name": s.name, "labels": s.labels, "value": s.value}))


if __name__ == "__main__":
    main()
