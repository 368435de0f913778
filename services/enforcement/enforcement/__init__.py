"""enforcement (执法力量集成): the town blows the whistle (吹哨) and the forces legally competent for a
violation report in (报到); the joint operation it opens completes with an outcome that closes the
work order. Owns the forces, their teams, legal competence and the operations."""
