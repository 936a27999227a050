//! [`View`]: the rectangle of the world the camera sees at a moment, and the mapping between
//! world and pixel coordinates.

use crate::spec::VIEW_WIDTH;
use crate::vocab::CameraMotion;

/// Pan speed, world units per second.
const PAN_SPEED: f32 = 0.35;
/// Zoom rate: the view's width changes by this factor per second (log scale).
const ZOOM_RATE: f32 = 0.12;
/// Share of the view's height below the ground line at the start.
const GROUND_SHARE: f32 = 0.14;

/// What the camera sees at one moment, for frames of `width`x`height` pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct View {
    /// World x at the view's centre.
    pub centre_x: f32,
    /// World y at the view's centre.
    pub centre_y: f32,
    /// World units per pixel.
    pub units_per_pixel: f32,
    /// Frame width in pixels.
    pub width: usize,
    /// Frame height in pixels.
    pub height: usize,
}

impl View {
    /// The view at `time` seconds for frames of `width`x`height`.
    pub fn at(camera: CameraMotion, time: f32, width: usize, height: usize) -> Self {
        let start_height = VIEW_WIDTH * height as f32 / width as f32;
        let mut centre_x = VIEW_WIDTH / 2.0;
        let mut centre_y = start_height * (0.5 - GROUND_SHARE);
        let mut view_width = VIEW_WIDTH;
        match camera {
            CameraMotion::Static => {}
            CameraMotion::PanLeft => centre_x -= PAN_SPEED * time,
            CameraMotion::PanRight => centre_x += PAN_SPEED * time,
            CameraMotion::PanUp => centre_y += PAN_SPEED * time,
            CameraMotion::PanDown => centre_y -= PAN_SPEED * time,
            CameraMotion::ZoomIn => view_width *= (-ZOOM_RATE * time).exp(),
            CameraMotion::ZoomOut => view_width *= (ZOOM_RATE * time).exp(),
        }
        Self {
            centre_x,
            centre_y,
            units_per_pixel: view_width / width as f32,
            width,
            height,
        }
    }

    /// World coordinates of the centre of pixel (`column`, `row`).
    pub fn to_world(&self, column: f32, row: f32) -> (f32, f32) {
        let x = self.centre_x + (column + 0.5 - self.width as f32 / 2.0) * self.units_per_pixel;
        let y = self.centre_y - (row + 0.5 - self.height as f32 / 2.0) * self.units_per_pixel;
        (x, y)
    }

    /// Pixel coordinates (column, row; fractional) of a world point.
    pub fn to_pixel(&self, x: f32, y: f32) -> (f32, f32) {
        let column = (x - self.centre_x) / self.units_per_pixel + self.width as f32 / 2.0 - 0.5;
        let row = (self.centre_y - y) / self.units_per_pixel + self.height as f32 / 2.0 - 0.5;
        (column, row)
    }

    /// Whether a disc of `radius` at (`x`, `y`) overlaps the view; a negative radius asks
    /// for the centre to lie that far inside.
    pub fn sees_disc(&self, x: f32, y: f32, radius: f32) -> bool {
        let half_width = self.width as f32 / 2.0 * self.units_per_pixel;
        let half_height = self.height as f32 / 2.0 * self.units_per_pixel;
        (x - self.centre_x).abs() < half_width + radius
            && (y - self.centre_y).abs() < half_height + radius
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_and_pixels_are_inverse() {
        let view = View::at(CameraMotion::ZoomIn, 1.5, 64, 48);
        let (x, y) = view.to_world(10.0, 20.0);
        let (column, row) = view.to_pixel(x, y);
        assert!((column - 10.0).abs() < 1e-4 && (row - 20.0).abs() < 1e-4);
    }

    #[test]
    fn ground_sits_near_the_bottom_and_pans_move_the_view() {
        let view = View::at(CameraMotion::Static, 0.0, 64, 64);
        let (_, ground_row) = view.to_pixel(2.0, 0.0);
        assert!(
            (ground_row - 64.0 * (1.0 - GROUND_SHARE)).abs() < 1.0,
            "{ground_row}"
        );
        let panned = View::at(CameraMotion::PanRight, 2.0, 64, 64);
        assert!(panned.centre_x > view.centre_x);
    }
}
