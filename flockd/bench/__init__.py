"""flockd.bench"""
