"""Adapters that plug tollway into gateways: they translate, call the one ``Engine``
(in process, or through ``tollway.client``) and add no policy of their own."""
