"""The compute core: data, models, training, the exact neighbour engine, metrics. Imports only torch,
numpy and scipy (never SQL, web or Celery), so it runs alone on a bare GPU machine."""
