// An event's js= (app/ui.py): the page's selection was emptied, so the map's highlighted photos are too.
() => { if (window.byolPhotoMap) window.byolPhotoMap.setSelection('photomap', []); }
