// An event's js= (app/ui.py): the map payload the server drew, handed to the map's script (photomap.js).
(d) => { window.byolPhotoMap.load('photomap', d); }
