"""What `prefect deploy` cannot declare in prefect.yaml: the self-healing automations."""
