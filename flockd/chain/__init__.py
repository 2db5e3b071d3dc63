"""flockd.chain"""
