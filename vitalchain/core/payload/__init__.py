"""core/payload"""
