"""Federated training across sites (hospitals) with Flower, around the study's models and data.

  python -m xray_keras.federated --flagfile=experiments/federated.cfg

`partition.py` splits the train split into patient-disjoint sites, `client.py` is the
site's Flower client (local training of a study model), `server.py` the Flower strategy and
server app, `run.py` the run: central data, sites, the rounds, and the normal run folder at the
end; `deployment.py` runs it through Flower's deployment runtime (SuperLink and SuperNodes).
"""
