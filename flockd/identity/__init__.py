"""flockd.identity"""
