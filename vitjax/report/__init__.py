"""Figures and the HTML report that `vitjax analyze`, `vitjax curvature` and `vitjax landscape` write."""
