"""Local S3-compatible server (OpenStack Swift + s3api) for the test suite; see server.py."""
