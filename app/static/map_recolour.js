// An event's js= (app/ui.py): labels or predictions changed, the map shown takes its new colour keys.
(d) => { if (window.byolPhotoMap) window.byolPhotoMap.recolour('photomap', d); }
