"""Subject requests (erasure, access, rectify, withdraw): flows, receipts and notices, free of Airflow."""
