"""Rebuild the bundled sample from the complete UCI Online Retail II data (CC BY 4.0).

    python -m ecominsight.data.build_sample ../shared/data/online_retail_ii_full

Takes the complete histories of a seeded random set of customers, plus the rows of a few guest
invoices (no customer id) so that the quarantine path sees real dirty rows. The overlap of the two
source files (2010-12-01..09 appears in both) is resolved by keeping the second file's copy.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ecominsight.logs import setup_logging

log = logging.getLogger(__name__)

COLUMNS = ["Invoice", "StockCode", "Description", "Quantity", "InvoiceDate", "Price", "Customer ID", "Country"]
OLDER_NAMES = {"InvoiceNo": "Invoice", "UnitPrice": "Price", "CustomerID": "Customer ID"}
OUTPUT = Path(__file__).parent / "online_retail_ii_sample.parquet"


def build(source_dir: Path, *, customers: int, guest_invoices: int, seed: int) -> pd.DataFrame:
    first = pd.read_parquet(source_dir / "online_retail_II_2009-2010.parquet")
    second = pd.read_parquet(source_dir / "online_retail_2010-2011.parquet").rename(columns=OLDER_NAMES)
    first = first[first["InvoiceDate"] < "2010-12-01"]
    combined = pd.concat([first[COLUMNS], second[COLUMNS]], ignore_index=True)
    rng = np.random.default_rng(seed)
    known = np.sort(combined["Customer ID"].dropna().unique())
    chosen = rng.choice(known, size=customers, replace=False)
    guests = np.sort(combined.loc[combined["Customer ID"].isna(), "Invoice"].unique())
    chosen_guests = rng.choice(guests, size=guest_invoices, replace=False)
    sample = combined[combined["Customer ID"].isin(chosen) | combined["Invoice"].isin(chosen_guests)]
    return sample.sort_values(["InvoiceDate", "Invoice"], kind="stable").reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source_dir", type=Path)
    parser.add_argument("--customers", type=int, default=500)
    parser.add_argument("--guest-invoices", type=int, default=30)
    parser.add_argument("--seed", type=int, default=2011)
    args = parser.parse_args()
    setup_logging()
    sample = build(args.source_dir, customers=args.customers, guest_invoices=args.guest_invoices, seed=args.seed)
    sample.to_parquet(OUTPUT, index=False, compression="zstd")
    log.info("wrote %d rows, %d customers to %s", len(sample), sample["Customer ID"].nunique(), OUTPUT)


if __name__ == "__main__":
    main()
