"""Wuji metrics (绩效指标): every event kept, folded into appeal and order facts, measured."""
